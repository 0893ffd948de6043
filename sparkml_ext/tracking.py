"""MLflow tracking of the training jobs: one run per stored model, or none without MLflow.

A job makes a `Tracker` when it starts (so `tracking.mode: required` fails before any
training) and, once the model is trained and judged, opens the run with its card:
parameters, holdout metrics, per-step series (the search's scores, torch's epochs),
timings and tags (feature table, its Delta version, config hash) are logged from the card,
then the model with its signature and an input example, and finally, after the model
store published the version, the store version as a tag, the card as an artifact and a
registered model version. The card carries the run id; the run carries the store version.

MLflow is optional: it is imported here and only here, lazily, so the jobs and the torch
workers run without it. The MLlib model is logged in the `spark` flavor (written through
a temporary folder under the lakehouse, which every executor can reach); the torch model
as a pyfunc whose loader is this module, so it loads with `weights_only=True` and takes a
pandas frame of named feature columns, like the MLlib one. Both ship the package's code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from sparkml_ext import modelstore, storage
from sparkml_ext.config import ConfigError, PipelineConfig
from sparkml_ext.feature_spec import spec_fingerprint
from sparkml_ext.stage_columns import pipeline_inputs

log = logging.getLogger(__name__)
MODEL_PATH = "model"  # the logged model's name inside its run
EXAMPLE_ROWS = 5


class Tracker:
    """Decides at job start whether this job is tracked; `run` then records one run."""

    def __init__(self, cfg: PipelineConfig, job: str):
        self.cfg, self.job = cfg, job
        self.started_ms = int(time.time() * 1000)
        self.mlflow = _import_mlflow(cfg, job)

    @contextmanager
    def run(self, card: dict, params: dict) -> Iterator[TrainingRun | Untracked]:
        """A run logged from `card` and `params`, ended FAILED if the block raises."""
        if self.mlflow is None:
            yield Untracked()
            return
        mlflow = self.mlflow
        experiment = _experiment(mlflow, self.cfg)
        tags = {"job": self.job, "pipeline": self.cfg.name, "pipeline_file": self.cfg.path,
                "model_type": card["model"], "feature_table": card["feature_table"],
                "feature_table_version": str(card["feature_version"]),
                "config_hash": card["config_hash"]}
        created = mlflow.MlflowClient().create_run(
            experiment, start_time=self.started_ms, tags=tags,
            run_name=f"{self.job} {card['model']} (features v{card['feature_version']})")
        with mlflow.start_run(run_id=created.info.run_id) as active:  # FAILED on an exception
            run = TrainingRun(mlflow, self.cfg, active.info.run_id, experiment)
            run.log_card(card, params)
            yield run

    def store(self, card: dict, params: dict, staged: str,
              log_model: Callable[[TrainingRun | Untracked], None]) -> dict:
        """How both training jobs keep a trained model; returns the job's result.

        `staged` (a `modelstore.staging` folder) already holds the model. In one tracked
        run: log the model (`log_model(run)`), add metrics and card beside it, publish the
        next store version, then tag the run with it and register the model. The result is
        the completed card, named after the job and rendered (its console line, rows per split).
        """
        # The feature definitions the model was trained on: serving refuses it under others.
        card["feature_spec"] = spec_fingerprint(self.cfg.features)
        with self.run(card, params) as run:
            log_model(run)
            card["mlflow"] = run.card_entry()
            modelstore.write_json(f"{staged}/metrics.json", card["metrics"])
            modelstore.write_json(f"{staged}/card.json", card)
            stored = modelstore.publish(self.cfg.table_path("models"), card["model"], staged)
            card["model_version"] = stored.name
            card["model_uri"] = stored.uri
            run.published(card)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in card["metrics"].items() if isinstance(v, float))
        summary = (f"{self.job}: {card['model_version']} on {card['feature_table']} "
                   f"v{card['feature_version']}: {metrics}")
        counts = {f"{s} rows": card["rows"][s] for s in ("train", "validation", "test", "unlabelled")
                  if s in card["rows"]}
        if card["rows"].get("unlabelled"):
            summary += f"; {card['rows']['unlabelled']} unlabelled rows left out"
        return {**card, "job": self.job, "summary": summary, "counts": counts}


class TrainingRun:
    """The active run of one training job."""

    def __init__(self, mlflow: Any, cfg: PipelineConfig, run_id: str, experiment_id: str):
        self.mlflow, self.cfg, self.run_id = mlflow, cfg, run_id
        self.experiment_id = experiment_id
        self.model_uri: str | None = None

    def log_card(self, card: dict, params: dict) -> None:
        """Params, one-off metrics and per-step series from a job's card."""
        mlflow = self.mlflow
        mlflow.log_params(_flatten(params))
        series = dict(card.get("epochs", {}))  # torch: train_loss, val_loss, val_<VALIDATION_METRIC> per epoch
        if "scores" in card.get("search", {}):  # mllib: the validation score of each grid point
            series["search_score"] = card["search"]["scores"]
            mlflow.log_params({"search.kind": card["search"]["kind"],
                               "search.grid": json.dumps(card["search"]["grid"])})
        once = {**card["metrics"], **card.get("timings", {}), **_prefixed("rows", card.get("rows", {})),
                **_prefixed("rows_per_s", card.get("rows_per_s", {}))}
        mlflow.log_metrics({k: float(v) for k, v in _numbers(once).items() if k not in series})
        for name, values in series.items():
            for step, value in enumerate(values, 1):
                mlflow.log_metric(name, float(value), step=step)

    def log_spark_model(self, model: Any, rows: Any) -> None:
        """The fitted PipelineModel in the `spark` flavor; `rows`: a DataFrame with its inputs."""
        from mlflow.models import infer_signature

        example = rows.select(*pipeline_inputs(model)).limit(EXAMPLE_ROWS)
        # Both schemas come from Spark's plan (no job runs): the input columns' types, and the
        # `prediction` column that MLflow's spark pyfunc returns.
        signature = infer_signature(example, model.transform(example).select("prediction"))
        # an xgboost.spark stage loads only where xgboost is installed
        xgboost = {"xgboost" for stage in model.stages if type(stage).__module__.startswith("xgboost.")}
        # MLflow copies the model out of its Spark-written temporary folder through Hadoop's
        # *default* file system: the lakehouse's folder where that is it (a local or shared
        # path), else MLflow's own default there (/tmp/mlflow on HDFS, DBFS, local disk)
        lakehouse = self.cfg.lakehouse
        on_default = "://" not in lakehouse or lakehouse.startswith("file:")
        with _package_folder() as package:
            info = self.mlflow.spark.log_model(
                model, MODEL_PATH, signature=signature, input_example=example.toPandas(),  # driver-ok: 5 rows
                dfs_tmpdir=self.cfg.lakehouse_path("_tmp/mlflow") if on_default else None,
                code_paths=[package], pip_requirements=_pins("pyspark", *xgboost))
        self.model_uri = info.model_uri

    def log_torch_model(self, model_file: str, rows: Any) -> None:
        """A saved `deep.model` file (a path or URI: MLflow gets a local copy) as a pyfunc
        loaded by this module; `rows`: a DataFrame."""
        from mlflow.models import infer_signature

        with storage.local_copy(model_file) as local_file, _package_folder() as package:
            predictor = _load_pyfunc(local_file)
            example = rows.select(*predictor.columns).limit(EXAMPLE_ROWS)
            sample = example.toPandas()  # driver-ok: 5 rows
            info = self.mlflow.pyfunc.log_model(
                name=MODEL_PATH, loader_module=__name__, data_path=local_file,
                code_paths=[package], signature=infer_signature(example, predictor.predict(sample)),
                input_example=sample, pip_requirements=_pins("torch", "numpy", "pandas"))
        self.model_uri = info.model_uri

    def card_entry(self) -> dict:
        """What the model card records of this run."""
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": self.mlflow.get_tracking_uri(), "model_uri": self.model_uri}

    def published(self, card: dict) -> None:
        """After the store published `card['model_version']`: tag it, keep the card, register
        the model (its registry version goes into the returned card, `mlflow.registered`)."""
        mlflow, stored = self.mlflow, card["model_version"]
        mlflow.set_tags({"model_store_version": stored, "model_store_uri": card["model_uri"]})
        mlflow.log_text(json.dumps(card, indent=2, sort_keys=True, default=str), "card.json")
        name = self.cfg.tracking.registered_model
        if not name or self.model_uri is None:
            return
        registered = mlflow.register_model(
            self.model_uri, name.replace("{model}", card["model"]),
            tags={"model_store_version": stored, "feature_table": card["feature_table"],
                  "feature_table_version": str(card["feature_version"])})
        card["mlflow"]["registered"] = {"name": registered.name, "version": int(registered.version)}


class Untracked:
    """The run of a job that is not tracked: every step does nothing."""

    run_id = None

    def log_spark_model(self, model: Any, rows: Any) -> None:
        pass

    def log_torch_model(self, model_file: str, rows: Any) -> None:
        pass

    def card_entry(self) -> None:
        return None

    def published(self, card: dict) -> None:
        pass


class TorchPyfuncModel:
    """pyfunc predictor of a `deep.model` file: `deep.inference` over a pandas frame."""

    def __init__(self, model_file: str):
        from sparkml_ext.deep.inference import Predictor

        self.predictor = Predictor.load(model_file)
        self.columns = self.predictor.columns

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        """A pandas frame with the model's columns (nulls = 0, as in training) → float64 array."""
        import pyarrow as pa

        used = model_input[model_input.columns.intersection(self.columns)]
        return self.predictor.predict(pa.RecordBatch.from_pandas(used, preserve_index=False))


def _load_pyfunc(data_path: str) -> TorchPyfuncModel:
    """MLflow's pyfunc loader hook (`loader_module`) for the torch model."""
    return TorchPyfuncModel(data_path)


def _import_mlflow(cfg: PipelineConfig, job: str) -> Any:
    mode = cfg.tracking.mode
    if mode == "disabled":
        return None
    try:
        import mlflow
    except ImportError as err:
        if mode == "required":
            raise ConfigError(f"{cfg.path}: tracking.mode: required, but MLflow cannot be imported "
                              f"({err}); pip install 'sparkml-ext[mlflow]'") from None
        log.warning("tracking: MLflow cannot be imported (%s), %s runs untracked; "
                    "pip install 'sparkml-ext[mlflow]' or set tracking.mode: disabled", err, job)
        return None
    return mlflow


def _experiment(mlflow: Any, cfg: PipelineConfig) -> str:
    """Point MLflow at the configured stores; the experiment's id, created on first use."""
    tr = cfg.tracking
    local = not tr.uri
    if local and "://" in cfg.lakehouse:
        raise ConfigError(f"{cfg.path}: tracking.uri: the lakehouse {cfg.lakehouse!r} is not a local "
                          f"folder for the default SQLite store; set tracking.uri")
    if local:
        os.makedirs(cfg.lakehouse_root, exist_ok=True)
    uri = tr.uri or f"sqlite:///{cfg.lakehouse_path('mlflow.db')}"
    mlflow.set_tracking_uri(uri)  # process-wide, as MLflow's fluent API (log_model) needs
    mlflow.set_registry_uri(tr.registry_uri or uri)
    name = tr.experiment or cfg.name
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = tr.artifact_location or (Path(cfg.lakehouse_path("mlartifacts")).as_uri() if local else None)
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another job created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params: 'grid.maxDepth' = '[4, 6]', null = 'None'."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return flat


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _numbers(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextmanager
def _package_folder() -> Iterator[str]:
    """This package as a folder, for MLflow's `code_paths`: where it was imported from, or a
    temporary copy when that is a zip (`--py-files sparkml_ext.zip` on a cluster)."""
    package = files(__package__)
    if isinstance(package, Path):
        yield str(package)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _copy_tree(package, Path(tmp, __package__))
        yield str(Path(tmp, __package__))


def _copy_tree(source: Traversable, target: Path) -> None:
    target.mkdir()
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_tree(entry, target / entry.name)
        elif not entry.name.endswith(".pyc"):
            (target / entry.name).write_bytes(entry.read_bytes())


def _pins(*distributions: str) -> list[str]:
    """Requirements of a logged model: the versions this job ran with."""
    from packaging.version import Version

    return [f"{d}=={Version(installed_version(d)).public}" for d in distributions]
