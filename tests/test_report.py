"""`sparkml-ext pipeline` ends with its report; the page renders in Chromium.

The run is the tiny pipeline on the test cluster (conftest.py's `cluster_pipeline`). Real
Spark, Delta, TorchDistributor, matplotlib and headless Chromium; nothing mocked.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from clickdata import clicks_config
from PIL import Image

from sparkml_ext.cli import EXIT_INPUT, EXIT_OK, _record, main
from sparkml_ext.holdout import BAYES
from sparkml_ext.report import (
    BINS,
    RESIDUAL_BINS,
    curves,
    read_run,
    record_run,
    residual_bins,
    stage_name,
)
from sparkml_ext.report_page import _training, write_page

PLOTS = {"roc.png", "calibration.png", "training.png", "rows.png", "quarantine.png",
         "throughput.png"}
CURVE_BLUE = (0x1F, 0x77, 0xB4)  # the plots' first colour (no CSS on the page uses it)


def _options(root: Path) -> list[str]:
    where = [f"lakehouse={root}/lake", f"source.path={root}/landing", "tracking.mode=disabled"]
    return [f"--set={s}" for s in where]


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def piped(spark, cluster_pipeline):
    """The tiny pipeline run on the test cluster (two batches, GBT, a 2-rank DDP model) and
    the page its report stage drew."""
    return cluster_pipeline.root, Path(cluster_pipeline.stages["report"]["html"])


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def _colours(png: Path) -> set[tuple]:
    with Image.open(png) as image:
        return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 24)}


@pytest.mark.parametrize(("bins", "auc"), [
    ([(BINS - 1, 10, 10, 9.9), (0, 10, 0, 0.01)], 1.0),  # every positive above every negative
    ([(0, 10, 10, 0.01), (BINS - 1, 10, 0, 9.9)], 0.0),
    ([(BINS // 2, 20, 10, 10.0)], 0.5),  # one bin: all tied
    ([(400, 10, 8, 8.0), (100, 10, 2, 2.0)], 0.8),  # 64 pairs ranked right + 32 ties / 2, of 100
])
def test_curves_from_hand_made_bins(bins, auc):
    curve = curves(bins)
    assert curve["auc"] == pytest.approx(auc)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == pytest.approx((1.0, 1.0))
    assert sum(p["rows"] for p in curve["calibration"]) == curve["rows"] == sum(b[1] for b in bins)


def _regressions(spark):
    """Two regressions' test rows: one predicts 0..199 for an actual of twice that, the other
    predicts 5 (actual 4) or 6 (actual 8), so its quantiles fall on two values."""
    rows = [("line", float(i), 2.0 * i) for i in range(200)]
    rows += [("steps", 5.0, 4.0)] * 7 + [("steps", 6.0, 8.0)] * 3
    return spark.createDataFrame(rows, "curve string, predicted double, actual double")


def test_residual_bins_group_a_regressions_rows_by_quantiles_of_its_prediction(spark):
    summary = residual_bins(_regressions(spark))
    line, steps = summary["line"], summary["steps"]
    assert len(line) == RESIDUAL_BINS and sum(g["rows"] for g in line) == 200
    assert all(8 <= g["rows"] <= 12 for g in line)  # about equal groups (quantiles are approximate)
    assert [g["predicted"] for g in line] == sorted(g["predicted"] for g in line)
    for g in line:  # actual = 2 x predicted: the residual is the prediction itself
        assert g["actual"] == pytest.approx(2 * g["predicted"])
        r = g["residual"]
        assert r["p10"] <= r["median"] <= r["p90"] and abs(r["median"] - g["predicted"]) <= 3
    assert steps == [  # a group per distinct prediction, however many quantiles fall on it
        {"rows": 7, "predicted": 5.0, "actual": 4.0, "residual": {"p10": -1.0, "median": -1.0, "p90": -1.0}},
        {"rows": 3, "predicted": 6.0, "actual": 8.0, "residual": {"p10": 2.0, "median": 2.0, "p90": 2.0}}]


def _model(kind: str, task: str, validation: str, **metrics) -> dict:
    """A model's row of `report.gather`'s data, trained two epochs."""
    return {"kind": kind, "task": task, "feature_version": 0, "metrics": metrics, "card_auc": metrics.get("auc_roc"),
            "bayes_optimal_auc": None, "log_loss": None, "search": None, "rows_per_s": None, "timings": None,
            "world_size": None, "holdout": {"by": "hash", "column": "id", "cuts": [0.7, 0.85]},
            "epochs": {"train_loss": [0.9, 0.5], "val_loss": [0.8, 0.6], validation: [0.7, 0.8]}}


def test_the_page_draws_the_residuals_of_its_regressions(spark, tmp_path):
    residuals = residual_bins(_regressions(spark))
    data = {"run": {"run_id": "r1", "pipeline": "p.yaml", "name": "p", "created_unix": 0.0},
            "stages": [], "quarantine": {}, "curves": {}, "residuals": residuals,
            "models": {"line": _model("torch", "regression", "val_rmse", rmse=1.0),
                       "steps": _model("torch", "regression", "val_rmse", rmse=2.0)}}
    page = write_page(data, str(tmp_path))
    assert [Path(p).name for p in page["images"]] == ["residuals.png", "training.png"]  # no ROC for a regression
    parser = _Images()
    parser.feed((tmp_path / "index.html").read_text())
    assert parser.sources == ["residuals.png", "training.png"]
    assert len(_colours(tmp_path / "residuals.png")) >= 20  # lines, bands, text
    assert json.loads((tmp_path / "report.json").read_text())["residuals"] == residuals


def test_each_validation_metric_has_a_panel_of_its_own():
    data = {"models": {"torch/v1": _model("torch", "classification", "val_auc", auc_roc=0.8),
                       "torch/v2": _model("torch", "regression", "val_rmse", rmse=1.0)}}
    figure = _training(data, {"torch/v1": "#1f77b4", "torch/v2": "#d62728"})
    panels = {ax.get_title(): {line.get_label() for line in ax.get_lines()} for ax in figure.axes}
    assert panels == {"Loss per epoch": {f"torch/v{n} {s}" for n in (1, 2) for s in ("train", "validation")},
                      "Validation AUC per epoch": {"torch/v1 validation"},
                      "Validation RMSE per epoch": {"torch/v2 validation"}}


def test_the_latest_run_is_the_latest_pipeline_run_with_the_jobs_run_after_it(tmp_path):
    cfg = clicks_config(tmp_path)
    ingest, old, new = ({"job": "ingest", "batch_id": "b0"}, {"job": "score", "model": "gbt/v1"},
                        {"job": "score", "model": "gbt/v2"})
    record_run(cfg, {"ingest b1": {"job": "ingest", "batch_id": "b1"}}, "ingest")  # before the pipeline
    piped = record_run(cfg, {"ingest b0": ingest, "score mllib": old, "score torch": {"job": "score"}})
    scored = record_run(cfg, {stage_name(new): new}, "score")
    assert list(read_run(cfg)["stages"].items()) == [
        ("ingest b0", ingest), ("score mllib", new), ("score torch", {"job": "score"})]
    assert read_run(cfg)["run_id"] == scored > piped
    assert read_run(cfg, piped)["stages"]["score mllib"] == old  # a run by id: as recorded
    assert [stage_name(r) for r in ({"job": "score", "model": "torch/v3"}, ingest, {"job": "features"})] \
        == ["score torch", "ingest b0", "features"]


def test_runs_of_another_files_tables_in_the_same_lakehouse_are_not_this_files(tmp_path):
    """A second label's models beside the first's (issue 19): its score run is not laid over
    this file's pipeline run, where the report would look for its model in the wrong table."""
    cfg = clicks_config(tmp_path)
    other = clicks_config(tmp_path, "tables.models=models/other", "tables.predictions=predictions/other")
    mine = record_run(cfg, {"score torch": {"job": "score", "model": "torch/v1"}})
    theirs = record_run(other, {"score torch": {"job": "score", "model": "torch/v7"}}, "score")
    assert read_run(cfg)["run_id"] == mine and read_run(cfg)["stages"]["score torch"]["model"] == "torch/v1"
    assert read_run(other)["run_id"] == theirs and list(read_run(other)["stages"]) == ["score torch"]
    with pytest.raises(FileNotFoundError, match="for the tables of"):
        read_run(clicks_config(tmp_path, "tables.models=models/third"))


def test_a_job_whose_run_cannot_be_recorded_says_so_and_stands(capsys):
    cfg = clicks_config("s3a://bucket/x")  # a URI Spark opens and pyarrow does not
    _record(cfg, "features", {"job": "features"}, time.monotonic())
    assert "features: its run is not recorded under s3a://bucket/x/lake/_meta/runs" in capsys.readouterr().err


@pytest.mark.slow
def test_the_pipeline_records_its_run_and_ends_by_printing_its_report(cluster_pipeline):
    root = cluster_pipeline.root
    runs = list((root / "lake/_meta/runs").glob("*.json"))
    assert len(runs) == 1
    run = json.loads(runs[0].read_text())
    page = root / "lake/reports" / run["run_id"] / "index.html"
    assert page.is_file() and Path(cluster_pipeline.stages["report"]["html"]) == page
    printed = cluster_pipeline.stdout[:cluster_pipeline.stdout.index("\n{")]  # before the JSON
    assert printed.rstrip().splitlines()[-1] == f"report: {page}"
    assert {"generate", "ingest batch-00001", "train-torch", "score mllib"} <= set(run["stages"])


@pytest.mark.slow
def test_the_page_links_valid_pngs_of_real_plots(piped):
    _, page = piped
    parser = _Images()
    parser.feed(page.read_text())
    assert set(parser.sources) == PLOTS
    for source in parser.sources:
        png = page.parent / source
        with Image.open(png) as image:
            image.verify()  # a whole, well-formed PNG
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 500 and image.height >= 250, source
        assert len(_colours(png)) >= 20, f"{source} looks blank"  # lines, text, anti-aliasing


@pytest.mark.slow
def test_the_binned_curves_agree_with_the_model_cards(piped):
    root, page = piped
    data = json.loads(page.with_name("report.json").read_text())
    run = json.loads(next((root / "lake/_meta/runs").glob("*.json")).read_text())["stages"]
    assert set(data["curves"]) == {"gbt/v1", "torch/v1", BAYES}
    for name, model in data["models"].items():
        curve = data["curves"][name]
        assert curve["auc"] == pytest.approx(model["card_auc"], abs=0.005), name
        assert curve["rows"] == run["train-mllib"]["rows"]["test"]  # the same hash split
        assert sum(p["rows"] for p in curve["calibration"]) == curve["rows"]
    optimum = data["models"]["gbt/v1"]["bayes_optimal_auc"]
    assert data["curves"][BAYES]["auc"] == pytest.approx(optimum, abs=0.005)
    quarantined = sum(n for counts in data["quarantine"].values() for n in counts.values())
    assert quarantined == sum(r["quarantined"] for r in run.values() if "rows_read" in r) > 0
    assert len(data["models"]["torch/v1"]["epochs"]["train_loss"]) == 2


@pytest.mark.slow
def test_report_redraws_the_latest_run_and_refuses_an_unknown_one(piped, tmp_path):
    root, _ = piped
    code, printed = _run("report", *_options(root), f"--out={tmp_path}/page")
    assert code == EXIT_OK and printed.strip().endswith(f"{tmp_path}/page/index.html")
    assert {p.name for p in (tmp_path / "page").iterdir()} == PLOTS | {"index.html", "report.json"}
    assert _run("report", *_options(root), "--run=19990101T000000Z-abcdef")[0] == EXIT_INPUT
    assert _run("report", *_options(tmp_path / "empty"))[0] == EXIT_INPUT


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(piped, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is not installed: `make test` installs it (apt-get install chromium)"
    _, page = piped
    shot = tmp_path / "page.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2000", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        counts = image.convert("RGB").getcolors(maxcolors=1 << 24)  # [(pixels, colour)]
    assert len(counts) >= 50  # text, tables and plots, not a blank or error page
    # The PNGs were loaded and painted: the plots' first colour covers many pixels.
    assert sum(n for n, c in counts if all(abs(a - b) <= 12 for a, b in zip(c, CURVE_BLUE))) > 500
    assert sum(n for n, c in counts if c == (255, 255, 255)) < 0.97 * 1280 * 2000
