"""Checkpoints that survive a kill at any instant and never run code when loaded.

A checkpoint is written to a temporary file in the same folder, fsynced, then renamed
over its final `step-%09d.pt` name, so a reader sees either the whole file or none.
Every load passes `weights_only=True`: a checkpoint is tensors and primitives only, and a
crafted pickle is refused instead of executed. RNG states are stored as tensors and
tuples of ints for that reason.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first (temporary files are not listed)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync, rename over `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return final


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise lose it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    state: dict[str, Any], directory: str | os.PathLike, step: int, keep: int = 3
) -> Path:
    """Atomically write `state` as step `step`, then delete all but the newest `keep`.

    Call it from one process (rank 0): concurrent writers to one folder are not supported.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for stale in Path(directory).glob(".step-*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    path = atomic_save(state, checkpoint_path(directory, step))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load one checkpoint; refuses anything but tensors and primitives."""
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
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
