"""A folder of model versions per kind, each written once and never replaced.

A version's files are assembled under `<root>/<kind>/_data/<id>/`, and it is published by
creating one small pointer, `<root>/<kind>/v<N>.json`, that names that folder, last and
exclusively (`storage.create_once`). No rename, so the same code path is atomic on a
local disk and on S3, which has none: a reader trusts only what a pointer names, a run
killed before its pointer leaves nothing a reader would take, and of two runs racing for
v<N> one gets it and the other takes the next number. A version published by rename (a
`v<N>/` folder, before pointers) is read as it is. No Spark, no torch.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from sparkml_ext.storage import create_once, filesystem

_FOLDER = re.compile(r"v(\d+)$")  # a version published by rename
_POINTER = re.compile(r"v(\d+)\.json$")
_DATA = "_data"
_ID = re.compile(r"[0-9a-f]{32}$")  # what a pointer may name: never a path of its own


@dataclass(frozen=True)
class ModelVersion:
    kind: str
    version: int
    uri: str

    @property
    def name(self) -> str:
        return f"{self.kind}/v{self.version}"


def versions(root: str, kind: str) -> list[ModelVersion]:
    folder = f"{root.rstrip('/')}/{kind}"
    fs, base = filesystem(folder)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and (m := _FOLDER.match(info.base_name)):
            found.append(ModelVersion(kind, int(m.group(1)), f"{folder}/{info.base_name}"))
        elif info.type == pafs.FileType.File and (m := _POINTER.match(info.base_name)):
            found.append(ModelVersion(kind, int(m.group(1)), f"{folder}/{_DATA}/{_pointed(fs, info.path)}"))
    return sorted(found, key=lambda v: v.version)


def _pointed(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as src:
        folder = json.loads(src.read()).get("folder", "")
    if not _ID.match(folder):
        raise ValueError(f"model pointer {path} names {folder!r}, not a version folder")
    return folder


def resolve(root: str, reference: str) -> ModelVersion:
    """'gbt/v3', 'gbt/latest', or 'latest' (the newest version of any kind, by write time)."""
    kind, _, which = reference.partition("/")
    if reference == "latest":
        kinds = _subfolders(root)
        candidates = [v for k in kinds for v in versions(root, k)]
        if not candidates:
            raise FileNotFoundError(f"no model versions under {root}: train a model first")
        return max(candidates, key=lambda v: read_json(v, "card.json").get("created_unix", 0))
    found = versions(root, kind)
    if not found:
        raise FileNotFoundError(f"no {kind} model versions under {root}")
    if which in ("", "latest"):
        return found[-1]
    for v in found:
        if f"v{v.version}" == which:
            return v
    raise FileNotFoundError(f"model {reference} not found under {root} (have {[v.name for v in found]})")


def _subfolders(root: str) -> list[str]:
    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def staging(root: str, kind: str) -> str:
    """A fresh folder to assemble the next version in; no reader looks at it until `publish`."""
    uri = f"{root.rstrip('/')}/{kind}/{_DATA}/{uuid.uuid4().hex}"
    fs, path = filesystem(uri)
    fs.create_dir(path)
    return uri


def publish(root: str, kind: str, staged: str) -> ModelVersion:
    """Point the next free version number at the `staging` folder; never replace a version."""
    parent, _, folder = staged.rstrip("/").rpartition("/")
    if parent != f"{root.rstrip('/')}/{kind}/{_DATA}" or not _ID.match(folder):
        raise ValueError(f"{staged} is not a staging folder of {kind} under {root}")
    for _ in range(20):
        taken = versions(root, kind)
        number = taken[-1].version + 1 if taken else 1
        pointer = json.dumps({"folder": folder}).encode()
        if create_once(f"{root.rstrip('/')}/{kind}/v{number}.json", pointer):
            return ModelVersion(kind, number, staged.rstrip("/"))
    raise RuntimeError(f"could not publish a new {kind} version under {root}: 20 numbers taken meanwhile")


def write_json(uri: str, payload: dict) -> None:
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(version: ModelVersion, name: str) -> dict:
    fs, path = filesystem(f"{version.uri}/{name}")
    with fs.open_input_stream(path) as src:
        return json.loads(src.read())
