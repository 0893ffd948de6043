"""train-torch: a DLRM trained with PyTorch DDP on Arrow shards of a pinned feature-table version.

The label decides its head (`train_torch.task`, inferred when null): a binary classifier
for labels 0 and 1, a regression for any other numbers, and for a label of classes (names,
booleans) a binary or multiclass classifier whose classes are its sorted values, as in
train-mllib's cards; the shards hold each label as its class's index.

The driver pins the feature-table version, exports the train and validation rows (the
hash split of train-mllib, so both models are judged on the same test rows) as Arrow
shards cached by (table, version, columns, filter), and runs `deep.train.train_worker`
on DDP ranks through TorchDistributor. Checkpoints live in a folder named by the feature
version and the config hash, so re-running a failed job resumes where it stopped. The
test rows are scored on the executors and the model is stored as `torch/v<N>`. Rows whose
label is unknown (`holdout.labelled_sql`) are in no shard and no metric, and the
result counts them; `score` scores them.

Embeddings: the feature table hashes categories into `features.hash_buckets` ids (about
a million); 26 tables of that many rows would hold 26M x dim floats (1.7 GB at dim 16,
three times that with AdamW's state), all-reduced densely at every step. Each table
therefore has `train_torch.embedding_rows` rows and the model folds larger ids in by
modulo, which is hashing into fewer buckets; the shards keep the full ids, so one export
serves any table size. The default 4096 rows validated best of the sizes tried and trains
faster than larger tables, as dense AdamW touches every row at every step (the measurements
are in benchmarks/README.md). Folding lets frequent values share rows;
`train_torch.vocabulary` K instead gives each column's K most frequent ids (counted by the
ranks on a sample of the training shards) rows of their own, and the vocabularies travel
with the model's config.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from sparkml_ext import lake, modelstore, storage, tracking
from sparkml_ext.bridge import export_table, launch, pick_backend
from sparkml_ext.bridge.predict import torch_predictions
from sparkml_ext.config import ConfigError, PipelineConfig, fingerprint
from sparkml_ext.deep.config import TrainConfig
from sparkml_ext.deep.manifest import Manifest
from sparkml_ext.deep.train import VALIDATION_METRIC, train_worker
from sparkml_ext.feature_spec import feature_columns
from sparkml_ext.holdout import (
    BINARY_CLASSES,
    CLASSIFICATION,
    MULTICLASS,
    REGRESSION,
    TrainError,
    bayes_optimal_auc,
    checked_classes,
    class_index,
    evaluate,
    label_classes,
    labelled_sql,
    require_label,
    resolve_split,
)

KIND = "torch"
# The card's task for each head (train-mllib's names for the same tasks).
CARD_TASK = {"binary": CLASSIFICATION, "multiclass": MULTICLASS, "regression": REGRESSION}


class TorchTrainError(TrainError):
    """train-torch cannot start on this data: no feature table, an empty split, bad columns."""


def train_torch(spark: SparkSession, cfg: PipelineConfig) -> dict:
    """Export, train on DDP ranks (resuming a checkpoint), evaluate, store; returns the card."""
    started = time.monotonic()
    if cfg.train_torch is None:
        raise ConfigError(f"{cfg.path}: train_torch: the file has no such section; add one "
                          "(`train_torch: {}` takes every default) to train a torch model")
    tracker = tracking.Tracker(cfg, "train-torch")
    tt, key, label = cfg.train_torch, cfg.source.key, cfg.features.label
    table = cfg.table_path("features")
    try:
        data, version = lake.read_version(spark, table, tt.feature_version)
    except FileNotFoundError:
        raise TorchTrainError(f"no feature table at {table}: run `sparkml-ext features` first") from None
    digest = config_hash(cfg, version)
    labelled = labelled_sql(label)
    task, classes = _head(data, cfg, labelled)
    split = resolve_split(data, cfg, labelled)
    shards = {s: _export(spark, cfg, table, version, f"{split.only(s)} AND {labelled}", s, classes)
              for s in ("train", "validation")}
    exported = time.monotonic()

    use_gpu = torch.cuda.is_available() if tt.use_gpu is None else tt.use_gpu
    checkpoints = _checkpoint_dir(cfg, version, digest)
    config = worker_config(cfg, use_gpu, checkpoints, task, classes)
    result = launch(train_worker, shards["train"].root, config, shards["validation"].root,
                    num_processes=tt.num_processes, local_mode=tt.local_mode, use_gpu=use_gpu,
                    max_restarts=tt.max_restarts)
    trained = result.value
    launched = time.monotonic()

    staged = modelstore.staging(cfg.table_path("models"), KIND)
    storage.copy_file(trained["model_path"], f"{staged}/model.pt")
    test = data.where((split.of() == "test") & F.expr(labelled))
    if classes:  # judged against the class indexes the model learnt
        test = test.withColumn(label, class_index(label, classes))
    unlabelled = data.where(f"NOT {labelled}").count()
    scored = torch_predictions(test, f"{staged}/model.pt", key, keep=[label])
    validation = f"val_{VALIDATION_METRIC[task]}"  # val_auc, val_accuracy, val_rmse
    metrics = evaluate(scored, CARD_TASK[task], label)
    metrics[validation] = trained[validation][-1]
    if task == "binary":
        optimum = bayes_optimal_auc(spark, cfg, test, label)
        if optimum is not None:
            metrics["bayes_optimal_auc"] = optimum
    if task == "regression":  # RegressionEvaluator reports no row count
        metrics["test_rows"] = test.count()
    evaluated = time.monotonic()

    card = {
        "model": KIND,
        "task": CARD_TASK[task],
        **({"classes": classes} if classes else {}),  # a prediction indexes them
        "feature_table": table,
        "feature_version": version,
        "label": label,
        "holdout": split.card(),
        "rows": {"train": shards["train"].rows, "validation": shards["validation"].rows,
                 "test": metrics["test_rows"], "unlabelled": unlabelled},
        "config_hash": digest,
        "params": asdict(config),
        "shards": {split: manifest.root for split, manifest in shards.items()},
        "metrics": metrics,
        "epochs": {k: trained[k] for k in ("train_loss", "val_loss", validation)},
        "training": {k: trained[k] for k in
                     ("steps", "stopped_early", "resumed_from_step", "world_size")},
        "attempts": [asdict(a) for a in result.attempts],
        "timings": {"export_seconds": round(exported - started, 1),
                    "train_seconds": round(launched - exported, 1),
                    "evaluate_seconds": round(evaluated - launched, 1),
                    "total_seconds": round(time.monotonic() - started, 1)},
        "rows_per_s": {"train_loop": round(trained["rows_per_s"]),
                       "evaluate": round(metrics["test_rows"] / max(evaluated - launched, 1e-9))},
        "created_unix": time.time(),
    }
    stored = tracker.store(card, asdict(config), staged,
                           lambda run: run.log_torch_model(trained["model_path"], test))
    stored["summary"] += f"; {len(result.attempts)} attempt(s), {card['rows_per_s']['train_loop']} rows/s"
    return stored


def _head(data: DataFrame, cfg: PipelineConfig, labelled: str) -> tuple[str, list | None]:
    """The head the label asks for, and a classifier's classes (sorted; None for a regression).

    `train_torch.task` when set; else a numeric label of 0s and 1s is binary, one with other
    numbers a regression (`_zero_one_classes`), and any other label (names, booleans) binary
    or multiclass by its count of classes. One Spark job at most.
    """
    label, task = cfg.features.label, cfg.train_torch.task
    try:
        require_label(data, label, KIND, numeric=task == "regression")
        if task == "regression":
            return task, None
        if task is None and isinstance(data.schema[label].dataType, NumericType):
            classes = _zero_one_classes(data, label, labelled)
            if classes is None:
                return "regression", None
        else:
            classes = label_classes(data, label, labelled, KIND)
    except TrainError as err:
        raise TorchTrainError(str(err)) from None
    task = task or ("binary" if len(classes) == 2 else "multiclass")
    if (task == "binary") != (len(classes) == 2):
        raise TorchTrainError(
            f"label column {label!r} has {len(classes)} classes; train_torch.task {task} needs "
            f"{'two' if task == 'binary' else 'three or more'}: set it to "
            f"{'multiclass or regression' if task == 'binary' else 'binary'}, or null, in {cfg.path}")
    return task, classes


def _zero_one_classes(data: DataFrame, label: str, labelled: str) -> list | None:
    """A numeric label's classes when its `labelled` rows hold only 0s and 1s (refused as
    `label_classes` refuses one class), else None. One aggregate, one row to the driver:
    with no other value, the minimum and the maximum are the distinct values."""
    y = F.col(label)
    other, low, high = data.where(labelled).agg(
        F.bool_or(~y.isin(*BINARY_CLASSES)), F.min(y), F.max(y)).head()  # driver-ok: one row
    if other:
        return None
    return checked_classes(list({low, high} - {None}), label, KIND)


def worker_config(
    cfg: PipelineConfig, use_gpu: bool, checkpoint_dir: str, task: str, classes: list | None = None
) -> TrainConfig:
    """The ranks' knobs from `train_torch`, with this run's head (`task` and `classes` as
    `_head` found them; a multiclass head gets their count), device, tables and folders."""
    tt, buckets = cfg.train_torch, cfg.features.hash_buckets + 1  # ids 0 (null) .. hash_buckets
    share = max(1, (os.cpu_count() or 1) // tt.num_processes)  # of the driver's cores, in local mode
    tables = {} if tt.vocabulary else {
        "embedding_sizes": min(tt.embedding_rows or buckets, buckets), "fold_ids": True}
    return tt.for_ranks(
        **tables,
        task=task,
        classes=len(classes or ()) if task == "multiclass" else 0,
        backend=pick_backend(use_gpu, tt.backend),
        device="cuda" if use_gpu else "cpu",
        num_threads=tt.num_threads or (share if tt.local_mode and not use_gpu else None),
        checkpoint_dir=checkpoint_dir,
        output_dir=checkpoint_dir,
    )


def config_hash(cfg: PipelineConfig, version: int) -> str:
    """What fixes the trained model: the feature spec, train_torch and the pinned version."""
    return fingerprint({"features": asdict(cfg.features),
                        "train_torch": {**asdict(cfg.train_torch), "feature_version": version}})


def _export(spark: SparkSession, cfg: PipelineConfig, table: str, version: int, rows: str,
            split: str, classes: list | None) -> Manifest:
    """The feature table's `rows` (SQL: the `split`'s labelled ones) as Arrow shards, a
    classifier's label as its class's index in `classes`."""
    columns = feature_columns(cfg.features)
    try:
        return export_table(
            spark, table, version=version, numeric=columns["numeric"],
            categorical=columns["categorical_ids"], label=cfg.features.label,
            filter=rows,
            label_classes=classes,
            cache_root=cfg.lakehouse_path("shards"),
        )
    except ValueError as err:  # missing columns, wrong types, a split without rows
        raise TorchTrainError(f"cannot export the {split} rows of {table} v{version}: {err}"
                              ) from None


def _checkpoint_dir(cfg: PipelineConfig, version: int, digest: str) -> str:
    root = cfg.train_torch.checkpoint_root or cfg.lakehouse_path("checkpoints")
    return storage.join(root if "://" in root else os.path.abspath(root), KIND, f"{version}-{digest}")
