"""A folder of model versions: `<root>/<kind>/v<N>/`, each written once and never replaced.

A version is assembled under a hidden staging folder and published by one rename, so
a reader never sees half a model and a crashed run leaves no version behind. Works on
any filesystem pyarrow reaches (local, file://, s3://, hdfs://). No Spark, no torch.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from sparkml_ext.storage import filesystem

_VERSION = re.compile(r"v(\d+)$")


@dataclass(frozen=True)
class ModelVersion:
    kind: str
    version: int
    uri: str

    @property
    def name(self) -> str:
        return f"{self.kind}/v{self.version}"


def versions(root: str, kind: str) -> list[ModelVersion]:
    fs, base = filesystem(f"{root.rstrip('/')}/{kind}")
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    found = [(int(m.group(1)), i) for i in infos if i.type == pafs.FileType.Directory
             and (m := _VERSION.match(i.base_name))]
    return [ModelVersion(kind, n, f"{root.rstrip('/')}/{kind}/v{n}") for n, _ in sorted(found)]


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
    """A fresh hidden folder to assemble the next version in."""
    uri = f"{root.rstrip('/')}/{kind}/_staging-{uuid.uuid4().hex[:12]}"
    fs, path = filesystem(uri)
    fs.create_dir(path)
    return uri


def publish(root: str, kind: str, staged: str) -> ModelVersion:
    """Rename the staging folder to the next free version; never replace an existing one."""
    fs, source = filesystem(staged)
    for _ in range(5):
        taken = versions(root, kind)
        number = taken[-1].version + 1 if taken else 1
        target = ModelVersion(kind, number, f"{root.rstrip('/')}/{kind}/v{number}")
        _, destination = filesystem(target.uri)
        if fs.get_file_info(destination).type != pafs.FileType.NotFound:
            continue  # a concurrent run took this number
        fs.move(source, destination)
        return target
    raise RuntimeError(f"could not publish a new {kind} version under {root}")


def write_json(uri: str, payload: dict) -> None:
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(version: ModelVersion, name: str) -> dict:
    fs, path = filesystem(f"{version.uri}/{name}")
    with fs.open_input_stream(path) as src:
        return json.loads(src.read())
