"""The report page: PNG plots (matplotlib, Agg) and one self-contained HTML file beside them.

Takes the small dict `report.gather` returns; no Spark here. The page links only its
own PNGs (no scripts, no network), so any browser, a CI artifact viewer or a file share
shows it as it is.
"""

from __future__ import annotations

import html
import io
import json
import time
from collections.abc import Callable

from sparkml_ext.holdout import BAYES
from sparkml_ext.storage import filesystem

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as err:  # the message is the point
    raise ImportError("the report needs matplotlib: pip install 'sparkml-ext[report]'") from err

MODELS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#17becf"]  # one per model, every plot
OPTIMUM = "#444444"  # the Bayes-optimal curve, dashed
ROWS, QUARANTINED = "#7f93a8", "#ff7f0e"
PARTS = ["#8da0cb", "#fc8d62", "#66c2a5", "#e78ac3", "#a6d854", "#ffd92f"]  # batches, phases
MIN_CALIBRATION_ROWS = 10  # fewer rows make a point noise, not evidence


def write_page(data: dict, out: str) -> dict:
    """Write `index.html`, its PNGs and `report.json` under `out`; returns their paths."""
    fs, folder = filesystem(out)
    fs.create_dir(folder)
    out = out.rstrip("/")
    colours = {name: MODELS[i % len(MODELS)] for i, name in enumerate(data["models"])}
    colours[BAYES] = OPTIMUM
    sections: list[tuple[str, str, str, bool]] = []  # (title, png name, caption, full width)
    for title, name, draw, caption, wide in _figures(data):
        figure = draw(data, colours)
        if figure is None:
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        with fs.open_output_stream(f"{folder}/{name}") as sink:
            sink.write(buffer.getvalue())
        sections.append((title, name, caption, wide))
    with fs.open_output_stream(f"{folder}/index.html") as sink:
        sink.write(_html(data, sections).encode())
    with fs.open_output_stream(f"{folder}/report.json") as sink:
        sink.write(json.dumps(data, indent=2, default=str).encode())
    return {"html": f"{out}/index.html", "images": [f"{out}/{s[1]}" for s in sections],
            "run_id": data["run"]["run_id"],
            "auc": {name: curve["auc"] for name, curve in data["curves"].items()}}


def _split_text(models: dict) -> str:
    """How the models' test rows were chosen (holdout.Split.card), said once per split."""
    said = []
    for model in models.values():
        split = model["holdout"]
        if split["by"] == "time":
            gap = f", after a gap of {split['gap_seconds']} s" if split["gap_seconds"] else ""
            text = f"Test split: events of {split['column']} from {split['test_from']} on{gap} (out of time)"
        else:
            text = f"Test split: {1 - split['cuts'][1]:.0%} of rows by a hash of {split['column']}"
        if text not in said:
            said.append(text)
    return "; ".join(said) or "Test split"


def _figures(data: dict) -> list[tuple[str, str, Callable, str, bool]]:
    """(title, file, drawing, caption, full width), in page order."""
    optimum = (" The Bayes-optimal curve ranks the same rows by the generator's planted "
               "probability." if BAYES in data["curves"] else "")  # generated data only
    return [
        ("ROC on the test split", "roc.png", _roc,
         f"{_split_text(data['models'])}, scores binned in Spark.{optimum}", False),
        ("Calibration on the test split", "calibration.png", _calibration,
         ("Mean predicted probability against the observed rate of positives, in 20 equal-width "
          f"bins (bins with fewer than {MIN_CALIBRATION_ROWS} test rows are not drawn)."), False),
        ("Regression residuals on the test split", "residuals.png", _residuals,
         (f"{_split_text(data['models'])}. Each regression's test rows in groups of about equal "
          "size by its prediction (its quantiles, computed in Spark): a group's mean actual value "
          "against its mean prediction, and the median of its residuals (actual - predicted) with "
          "the band from their 10th to their 90th percentile."), True),
        ("Training", "training.png", _training,
         ("Torch: loss and the validation metric of its task (AUC, accuracy or RMSE) per epoch. "
          "MLlib: validation AUC of a classifier's best grid point."), True),
        ("Rows per stage", "rows.png", _rows,
         "Rows each stage read, kept or wrote in this run.", False),
        ("Quarantine reasons", "quarantine.png", _quarantine,
         "This run's quarantined records by their first reason, counted in Spark.", False),
        ("Bridge throughput", "throughput.png", _throughput,
         ("Rows per second the DDP training loop consumed from the bridge's Arrow shards (all "
          "ranks), and where train-torch spent its time."), True),
    ]


def _label_bars(ax, values: list[float], suffix: str = "", fontsize: int = 8) -> None:
    """Write each horizontal bar's value just past its end."""
    for y, value in enumerate(values):
        ax.annotate(f"{value:,.0f}{suffix}", (value, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=fontsize)


def _rows(data: dict, colours: dict):
    bars = [(f"{s['stage']}: {measure}", n) for s in data["stages"] for measure, n in s.items()
            if measure not in ("stage", "seconds")]
    if not bars:
        return None
    figure, ax = plt.subplots(figsize=(6, 0.24 * len(bars) + 1.0))
    ax.barh([label for label, _ in bars], [n for _, n in bars],
            color=[QUARANTINED if label.endswith("quarantined") else ROWS for label, _ in bars])
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    _label_bars(ax, [n for _, n in bars], fontsize=7)
    ax.set_xlabel("rows")
    ax.set_title("Rows per stage")
    ax.margins(x=0.12)
    return figure


def _quarantine(data: dict, colours: dict):
    reasons = data["quarantine"]
    if not reasons:
        return None
    names = sorted(reasons, key=lambda r: -sum(reasons[r].values()))
    batches = sorted({b for counts in reasons.values() for b in counts})
    figure, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.4))
    left = [0] * len(names)
    for i, batch in enumerate(batches):
        counts = [reasons[r].get(batch, 0) for r in names]
        ax.barh(names, counts, left=left, color=PARTS[i % len(PARTS)], label=batch)
        left = [a + b for a, b in zip(left, counts)]
    _label_bars(ax, left)
    ax.invert_yaxis()
    ax.set_xlabel("quarantined records")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Quarantine reasons per batch")
    ax.legend(title="batch", fontsize=8)
    ax.margins(x=0.1)
    return figure


def _unit_square(ax, title: str, xlabel: str, ylabel: str, diagonal: str, legend: str) -> None:
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", label=diagonal, zorder=0)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)


def _roc(data: dict, colours: dict):
    if not data["curves"]:
        return None
    figure, ax = plt.subplots(figsize=(6, 5.2))
    for name, curve in data["curves"].items():
        ax.plot(curve["fpr"], curve["tpr"], color=colours[name],
                linestyle="--" if name == BAYES else "-", label=f"{name} (AUC {curve['auc']:.3f})")
    _unit_square(ax, "ROC, test split", "false positive rate", "true positive rate",
                 "chance (AUC 0.5)", "lower right")
    return figure


def _calibration(data: dict, colours: dict):
    if not data["curves"]:
        return None
    figure, ax = plt.subplots(figsize=(6, 5.2))
    for name, curve in data["curves"].items():
        points = [p for p in curve["calibration"] if p["rows"] >= MIN_CALIBRATION_ROWS]
        ax.plot([p["predicted"] for p in points], [p["observed"] for p in points], marker="o",
                markersize=3, color=colours[name], linestyle="--" if name == BAYES else "-",
                label=name)
    _unit_square(ax, "Calibration, test split", "mean predicted probability",
                 "observed rate of positives", "perfectly calibrated", "upper left")
    return figure


def _residuals(data: dict, colours: dict):
    residuals = data["residuals"]
    if not residuals:
        return None
    figure, (fit_ax, residual_ax) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, groups in residuals.items():
        predicted = [g["predicted"] for g in groups]
        fit_ax.plot(predicted, [g["actual"] for g in groups], marker="o", markersize=3,
                    color=colours[name], label=name)
        residual_ax.plot(predicted, [g["residual"]["median"] for g in groups], marker="o",
                         markersize=3, color=colours[name], label=f"{name} median")
        residual_ax.fill_between(predicted, [g["residual"]["p10"] for g in groups],
                                 [g["residual"]["p90"] for g in groups], color=colours[name],
                                 alpha=0.15, label=f"{name} 10th-90th percentile")
    ends = [v for groups in residuals.values() for g in groups for v in (g["predicted"], g["actual"])]
    fit_ax.plot([min(ends), max(ends)], [min(ends), max(ends)], color="#bbbbbb", linestyle=":",
                label="actual = predicted", zorder=0)
    residual_ax.axhline(0, color="#bbbbbb", linestyle=":", zorder=0)
    fit_ax.set(title="Predicted against actual, test split", xlabel="mean prediction of a group",
               ylabel="mean actual value of the group")
    residual_ax.set(title="Residual against prediction, test split",
                    xlabel="mean prediction of a group", ylabel="actual - predicted")
    for ax in (fit_ax, residual_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return figure


def _training(data: dict, colours: dict):
    deep = {n: m for n, m in data["models"].items() if m.get("epochs")}
    if not deep:
        return None
    # a torch card's validation series is val_auc, val_accuracy or val_rmse (by its task):
    # one panel per metric, so that each axis says what its lines measure
    series = {name: next(k for k in model["epochs"] if k.startswith("val_") and k != "val_loss")
              for name, model in deep.items()}
    metrics = sorted(set(series.values()))
    figure, (loss_ax, *metric_axes) = plt.subplots(1, 1 + len(metrics), figsize=(6 * (1 + len(metrics)), 4))
    panels = dict(zip(metrics, metric_axes))
    for name, model in deep.items():
        epochs = range(1, len(model["epochs"]["train_loss"]) + 1)
        loss_ax.plot(epochs, model["epochs"]["train_loss"], marker="o", color=colours[name],
                     label=f"{name} train")
        loss_ax.plot(epochs, model["epochs"]["val_loss"], marker="s", linestyle="--",
                     color=colours[name], label=f"{name} validation")
        panels[series[name]].plot(epochs, model["epochs"][series[name]], marker="o",
                                  color=colours[name], label=f"{name} validation")
    auc_ax = panels.get("val_auc")
    if auc_ax is not None:  # the references below are AUCs
        for name, model in data["models"].items():
            scores = (model.get("search") or {}).get("scores")
            if scores and model["card_auc"] is not None:  # a binary classifier's search: AUC
                auc_ax.axhline(max(scores), color=colours[name], linestyle="-.",
                               label=f"{name} validation (best grid point)")
        optimum = [m["bayes_optimal_auc"] for m in data["models"].values() if m["bayes_optimal_auc"]]
        if optimum:
            auc_ax.axhline(optimum[0], color=OPTIMUM, linestyle="--", label=f"{BAYES} (test)")
    loss_ax.set(title="Loss per epoch", ylabel="log loss, or squared error of the standardised label")
    for metric, ax in panels.items():
        name = metric.removeprefix("val_").upper()
        ax.set(title=f"Validation {name} per epoch", ylabel=name)
    for ax in (loss_ax, *metric_axes):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
                  frameon=False)  # below the axes: reference lines span the whole width
        ax.grid(alpha=0.3)
    return figure


def _throughput(data: dict, colours: dict):
    deep = {n: m for n, m in data["models"].items() if (m["rows_per_s"] or {}).get("train_loop")}
    if not deep:
        return None
    figure, (rate_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 0.5 * len(deep) + 2.2))
    labels = [f"{name}\n{m['world_size'] or '?'} rank(s)" for name, m in deep.items()]
    rates = [m["rows_per_s"]["train_loop"] for m in deep.values()]
    rate_ax.barh(labels, rates, height=0.5, color=[colours[n] for n in deep])
    _label_bars(rate_ax, rates, " rows/s")
    rate_ax.set(title="DDP training loop fed by the bridge", xlabel="training rows per second")
    rate_ax.margins(x=0.35)
    for ax in (rate_ax, time_ax):
        ax.set_ylim(len(deep) - 0.25, -0.75)  # thin bars, first model on top
    left = [0.0] * len(deep)
    for i, phase in enumerate(("export", "train", "evaluate")):
        seconds = [(m["timings"] or {}).get(f"{phase}_seconds", 0.0) for m in deep.values()]
        time_ax.barh(labels, seconds, left=left, height=0.5, color=PARTS[i], label=phase)
        left = [a + b for a, b in zip(left, seconds)]
    time_ax.set(title="train-torch time: shard export, DDP training, test scoring",
                xlabel="seconds")
    time_ax.legend(fontsize=8, loc="lower right")
    return figure


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { margin-bottom: 0; } .meta { color: #666; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child, .text { text-align: left; } th { background: #f3f5f7; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 24px; }
figure { margin: 0 0 12px; min-width: 0; } figure.wide { grid-column: 1 / -1; }
figure h2 { font-size: 18px; margin: 8px 0; } figcaption { color: #555; font-size: 13px; }
img { width: 100%; border: 1px solid #eee; }
"""


def _html(data: dict, sections: list[tuple[str, str, str, bool]]) -> str:
    run, e = data["run"], html.escape
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run["created_unix"]))
    figures = "".join(
        f"<figure class='{'wide' if wide else ''}'><h2>{e(title)}</h2>"
        f"<img src='{name}' alt='{e(title)}'><figcaption>{e(caption)}</figcaption></figure>"
        for title, name, caption, wide in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{e(run['name'])} run {e(run['run_id'])}</title><style>{STYLE}</style></head>"
            f"<body><h1>Pipeline run {e(run['run_id'])}</h1>"
            f"<p class='meta'>{e(run['name'])} · {e(str(run['pipeline']))} · {when}</p>"
            f"<h2>Models</h2>{_models_table(data)}<div class='grid'>{figures}</div>"
            f"<h2>Stages</h2>{_stages_table(data)}</body></html>")


# Shown in a column of their own (classifiers), or not a holdout figure of the model.
_OWN_COLUMNS = {"auc_roc", "bayes_optimal_auc", "log_loss", "test_rows"}


def _models_table(data: dict) -> str:
    """One row per model: its task's test metrics; the AUC columns where a model is a
    classifier, the Bayes-optimal ones only where a model has that optimum."""
    models = data["models"].values()
    binary = any(m["card_auc"] is not None for m in models)
    compared = any(m["bayes_optimal_auc"] is not None for m in models)
    own = _OWN_COLUMNS if binary else _OWN_COLUMNS - {"log_loss"}  # a multiclass model's, then
    rows = []
    for name, model in data["models"].items():
        curve = data["curves"].get(name, {})
        auc, optimum = model["card_auc"], model["bayes_optimal_auc"]
        gap = optimum - auc if optimum is not None and auc is not None else None
        others = " · ".join(f"{k} {_num(v)}" for k, v in model.get("metrics", {}).items() if k not in own)
        rows.append([name, model["kind"], model.get("task") or "", f"v{model['feature_version']}", others,
                     *([_num(auc), _num(curve.get("auc"))] if binary else []),
                     *([_num(optimum), _num(gap)] if compared else []),
                     *([_num(model["log_loss"]), f"{curve['rows']:,}" if curve else ""] if binary else [])])
    return _table(["model", "kind", "task", "feature table", "test metrics",
                   *(["test AUC", "AUC (binned curve)"] if binary else []),
                   *(["Bayes-optimal AUC", "gap"] if compared else []),
                   *(["log loss", "test rows"] if binary else [])], rows, left={4})


def _stages_table(data: dict) -> str:
    rows = [[s["stage"], _num(s["seconds"], 1),
             ", ".join(f"{k} {v:,}" for k, v in s.items() if k not in ("stage", "seconds"))]
            for s in data["stages"]]
    return _table(["stage", "seconds", "rows"], rows, left={2})


def _table(head: list[str], rows: list[list[str]], left: set[int] = frozenset()) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{' class=text' if i in left else ''}>{html.escape(v)}</{tag}>"
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
