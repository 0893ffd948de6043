"""Checkpoints that survive a kill at any instant and never run code when loaded.

A checkpoint folder is a local path or any URI `storage.filesystem` opens (s3a://, gs://,
...). A checkpoint is serialized in memory and published whole under its final
`step-%09d.pt` name by `storage.write_whole` (on disk: written aside, fsynced, renamed; on
an object store: one upload, visible only once complete), so a reader sees either the
whole file or none, and no store needs a rename. Every load passes `weights_only=True`: a
checkpoint is tensors and primitives only, and a crafted pickle is refused instead of
executed. RNG states are stored as tensors and tuples of ints for that reason.
"""

from __future__ import annotations

import io
import os
import random
import re
import warnings
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from sparkml_ext.storage import filesystem, join, read_whole, write_whole

_NAME = re.compile(r"^step-(\d{9})\.pt$")
_LEFTOVER = re.compile(r"^\.step-\d{9}.*\.tmp$")  # a local writer killed mid-write


def checkpoint_path(directory: str | os.PathLike, step: int) -> str:
    return join(str(directory), f"step-{step:09d}.pt")


def _listing(directory: str | os.PathLike) -> tuple[pafs.FileSystem, str, list[str]]:
    """The folder's file system, its path there, and the names of the files in it, sorted."""
    fs, base = filesystem(str(directory))
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return fs, base, sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def list_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Complete checkpoints in `directory`, oldest first (temporary files are not listed)."""
    return [join(str(directory), n) for n in _listing(directory)[2] if _NAME.match(n)]


def save_whole(obj: Any, path: str | os.PathLike) -> str:
    """`torch.save` of `obj` published at `path` in one step (`storage.write_whole`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_whole(str(path), buffer.getvalue())
    return str(path)


def save_checkpoint(
    state: dict[str, Any], directory: str | os.PathLike, step: int, keep: int = 3
) -> str:
    """Write `state` as step `step` in one step, then delete all but the newest `keep`.

    Call it from one process (rank 0): concurrent writers to one folder are not supported.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    fs, base, names = _listing(directory)
    for stale in filter(_LEFTOVER.match, names):
        fs.delete_file(f"{base}/{stale}")
    path = save_whole(state, checkpoint_path(directory, step))
    kept = sorted({*filter(_NAME.match, names), os.path.basename(path)})  # one listing, not two
    for old in kept[:-keep]:
        fs.delete_file(f"{base}/{old}")
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load one checkpoint; refuses anything but tensors and primitives."""
    data = io.BytesIO(read_whole(str(path)))
    return torch.load(data, map_location=map_location, weights_only=True)


def latest_checkpoint(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its path; warns about and skips broken ones."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as err:  # truncated zip, bad pickle, refused global: all mean "unusable"
            warnings.warn(
                f"checkpoint {path} cannot be loaded ({err!r}); falling back to an older one",
                stacklevel=2,
            )
    return None


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states in a form `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
