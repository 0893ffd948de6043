"""Small, explicit click-log lines for tests, in the landing format of clicks.yaml."""

from __future__ import annotations

from pathlib import Path

NUMERICS = 13
CATEGORICALS = 26


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
