"""The click demo for tests: its pipeline file under a test's own folder, and small, explicit
click-log lines in its landing format."""

from __future__ import annotations

from pathlib import Path

from sparkml_ext.config import PipelineConfig, load_config

CLICKS = "conf/pipelines/clicks.yaml"
NUMERICS = 13
CATEGORICALS = 26


def clicks_config(root: Path | str, *overrides: str) -> PipelineConfig:
    """clicks.yaml with its lakehouse at `<root>/lake` and its landing at `<root>/landing`."""
    return load_config(CLICKS, [f"lakehouse={root}/lake", f"source.path={root}/landing", *overrides])


def line(
    event_id: str = "e1",
    user_id: str = "1",
    event_time: str = "2026-01-01 10:00:00",
    label: str = "0",
    numeric: str = "1.5",
    category: str = "a1b2c3d4",
) -> str:
    """One tab-separated record; every numeric/categorical field gets the same value."""
    fields = [event_id, user_id, event_time, label]
    fields += [numeric] * NUMERICS + [category] * CATEGORICALS
    return "\t".join(fields)


def write_batch(folder: Path, lines: list[str], name: str = "part-00000.tsv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{x}\n" for x in lines))
    return folder


def as_events(rows: list) -> list[dict]:
    """Bronze rows as a client of `sparkml-ext serve` sends them: the source's columns, times
    as text."""
    return [{k: (v.strftime("%Y-%m-%d %H:%M:%S") if hasattr(v, "strftime") else v)
             for k, v in r.asDict().items() if not k.startswith("_") and k != "event_date"} for r in rows]
