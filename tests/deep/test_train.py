"""train_worker in this process (no process group): config errors, early stopping, resume."""

import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from shardkit import CLICK_COLUMNS, click_table, write_shards

from sparkml_ext.deep.checkpoint import list_checkpoints
from sparkml_ext.deep.config import TrainConfig
from sparkml_ext.deep.inputs import frequent_ids
from sparkml_ext.deep.model import load_model
from sparkml_ext.deep.shard_reader import read_manifest
from sparkml_ext.deep.train import train_worker

BASE = TrainConfig(
    device="cpu",  # exact-loss comparisons need deterministic CPU kernels; see test_gpu.py
    epochs=1,
    batch_size=64,
    embedding_sizes=64,
    shuffle_buffer=256,
    chunk_rows=128,
    num_threads=1,
)


def test_config_errors_name_the_key(clicks):
    path = str(clicks(rows=200))
    with pytest.raises(TypeError, match="'learning_rate'"):
        TrainConfig(learning_rate=0.1)
    with pytest.raises(ValueError, match="embedding_sizes: required for categorical columns"):
        train_worker(path, replace(BASE, embedding_sizes=None))
    with pytest.raises(ValueError, match=r"embedding_sizes: no size for columns \['c1'\]"):
        train_worker(path, replace(BASE, embedding_sizes={"c0": 10}))
    with pytest.raises(ValueError, match="vocabulary: must be at least 1, got 0"):
        replace(BASE, vocabulary=0)
    with pytest.raises(ValueError, match="precision: 'fp8' is not one of auto, fp32, bf16, fp16"):
        replace(BASE, precision="fp8")


def test_vocabulary_gives_the_most_frequent_ids_their_own_rows(clicks, tmp_path):
    path = str(clicks(rows=600))
    config = replace(BASE, vocabulary=5, epochs=3, lr=0.01, output_dir=str(tmp_path))
    metrics = train_worker(path, config)
    model, _ = load_model(metrics["model_path"])
    expected = frequent_ids(read_manifest(path), top=5)
    assert model.config.vocabularies == tuple(tuple(v) for v in expected)
    assert all(len(v) == 5 for v in expected) and not model.config.fold_ids
    assert model.config.embedding_sizes == (6,) * len(expected)
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]


def test_early_stopping_when_validation_loss_stops_improving(clicks):
    train, val = str(clicks(rows=300)), str(clicks(rows=200, seed=1, name="val"))
    metrics = train_worker(train, replace(BASE, lr=0.0, epochs=10, patience=2), val)
    assert metrics["stopped_early"] and metrics["epochs"] == 3  # best at epoch 0, then 2 bad
    assert metrics["val_loss"][0] == metrics["val_loss"][2] == metrics["best_val_loss"]


def test_a_rerun_resumes_from_the_last_checkpoint(clicks, tmp_path):
    train = str(clicks(rows=300))  # 5 steps per epoch
    config = replace(
        BASE,
        epochs=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every=4,
        output_dir=str(tmp_path / "out"),
    )
    first = train_worker(train, config)
    assert (first["steps"], first["resumed_from_step"]) == (10, 0)
    checkpoints = list_checkpoints(tmp_path / "ckpt")
    assert [os.path.basename(p) for p in checkpoints] == [
        "step-000000004.pt",
        "step-000000008.pt",
        "step-000000010.pt",
    ]
    os.unlink(checkpoints[-1])  # as if killed after step 8: steps 9-10 are redone
    again = train_worker(train, replace(config, epochs=3))
    assert again["resumed_from_step"] == 8
    assert again["steps"] == 15 and again["epochs"] == 3
    assert again["train_loss"][:2] == pytest.approx(first["train_loss"], rel=1e-9)
    finished = train_worker(train, replace(config, epochs=3))  # nothing left to do
    assert finished["resumed_from_step"] == 15 and finished["train_loss"] == again["train_loss"]
    saved = torch.load(again["model_path"], weights_only=True)
    assert set(saved) == {"state_dict", "config"}


def test_a_changed_data_plan_restarts_the_interrupted_epoch(clicks, tmp_path, caplog):
    train = str(clicks(rows=300))
    config = replace(BASE, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=3)
    train_worker(train, config)  # checkpoints at steps 3 and 5 (the end)
    (tmp_path / "ckpt" / "step-000000005.pt").unlink()
    again = train_worker(train, replace(config, batch_size=32))  # 10 batches per epoch now
    assert "the data plan changed" in caplog.text
    assert again["resumed_from_step"] == 3 and again["steps"] == 3 + 10


def test_numerics_of_any_scale_are_standardised_with_training_row_statistics(tmp_path):
    def shards(rows: int, seed: int, name: str) -> str:
        table = click_table(rows, seed)  # x0 drives the label; make it a count-like number
        x0 = table["x0"].to_numpy() * 1e4 + 5e4
        table = table.set_column(table.schema.get_field_index("x0"), "x0", pa.array(x0))
        return str(write_shards(tmp_path / name, table, **CLICK_COLUMNS))

    train, val = shards(3000, 0, "train"), shards(1000, 1, "val")
    config = replace(BASE, epochs=3, lr=3e-3, output_dir=str(tmp_path / "out"))
    standardised = train_worker(train, config, val)
    raw = train_worker(train, replace(config, normalize_numeric=False, output_dir=None), val)
    assert standardised["val_auc"][-1] > 0.8 > raw["val_auc"][-1] + 0.05
    saved = torch.load(standardised["model_path"], weights_only=True)["config"]["model"]
    x0 = np.log1p(np.abs(click_table(3000, 0)["x0"].to_numpy() * 1e4 + 5e4))
    assert saved["numeric_mean"][0] == pytest.approx(x0.mean(), rel=1e-6)  # all rows sampled
    assert saved["numeric_std"][0] == pytest.approx(x0.std(), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_trains_on_the_gpu_with_pinned_batches_and_mixed_precision(clicks, tmp_path):
    train, val = str(clicks(rows=4000)), str(clicks(rows=1000, seed=1, name="val"))
    config = replace(BASE, device="cuda", epochs=3, lr=3e-3, output_dir=str(tmp_path))
    gpu = train_worker(train, config, val)
    cpu = train_worker(train, replace(config, device="cpu", output_dir=None), val)
    assert (gpu["device"], gpu["backend"]) == ("cuda:0", None)
    assert gpu["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert gpu["val_auc"][-1] == pytest.approx(cpu["val_auc"][-1], abs=0.02)
    assert gpu["val_auc"][-1] > 0.8
    saved = torch.load(gpu["model_path"], weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())


def test_a_continuous_label_trains_a_regression_head_in_the_labels_units(tmp_path):
    """A label of any scale (here around 1,000, spread 200): the model learns it standardised
    with the training rows' mean and std, is judged by RMSE in the label's units, and the
    stored model predicts in those units, well inside the label's own spread."""
    from sparkml_ext.deep.inference import Predictor

    def shards(rows: int, seed: int, name: str) -> tuple[str, pa.Table]:
        table = click_table(rows, seed)
        x = table["x0"].to_numpy()
        target = 1000 + 150 * x + 60 * np.where(table["c0"].to_numpy() % 2 == 0, 1.0, -1.0)
        noise = np.random.default_rng(seed).normal(0, 20, rows)
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(target + noise))
        columns = {**CLICK_COLUMNS, "numeric": ("x0", "x1", "x2", "x3")}  # scalar columns, as a feature table's
        return str(write_shards(tmp_path / name, table, **columns)), table

    (train, table), (val, held_out) = shards(3000, 0, "train"), shards(1000, 1, "val")
    config = replace(BASE, task="regression", epochs=4, lr=3e-3, output_dir=str(tmp_path / "out"))
    result = train_worker(train, config, val)
    assert "val_auc" not in result and len(result["val_rmse"]) == 4
    spread = float(np.std(held_out["label"].to_numpy()))
    assert result["val_rmse"][-1] < 0.5 * spread < result["val_rmse"][0] * 2  # learned, in label units
    model, saved = load_model(result["model_path"])
    assert saved["model"]["task"] == "regression"
    assert saved["model"]["target_mean"] == pytest.approx(float(np.mean(table["label"].to_numpy())), rel=1e-6)
    predicted = Predictor(model, saved).predict(held_out.to_batches(max_chunksize=1000)[0])
    error = predicted - held_out["label"].to_numpy()[:1000]
    assert float(np.sqrt(np.mean(error**2))) == pytest.approx(result["val_rmse"][-1], rel=1e-4)


def test_a_label_of_three_classes_trains_a_multiclass_head(tmp_path):
    """Labels 0, 1, 2 (class indexes) learnt by one logit per class: judged by accuracy per
    epoch, stored with its class count, and predicting each class's probability."""
    from sparkml_ext.deep.inference import Predictor

    def shards(rows: int, seed: int, name: str) -> tuple[str, pa.Table]:
        table = click_table(rows, seed)
        x0, c0 = table["x0"].to_numpy(), table["c0"].to_numpy()
        label = np.where(x0 > 0.5, 2, np.where(c0 % 2 == 0, 1, 0)).astype(np.int32)  # three regions
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(label))
        columns = {**CLICK_COLUMNS, "numeric": ("x0", "x1", "x2", "x3")}
        return str(write_shards(tmp_path / name, table, **columns)), table

    (train, _), (val, held_out) = shards(3000, 0, "train"), shards(1000, 1, "val")
    config = replace(BASE, task="multiclass", classes=3, epochs=3, lr=1e-2, output_dir=str(tmp_path / "out"))
    result = train_worker(train, config, val)
    assert len(result["val_accuracy"]) == 3 and result["val_accuracy"][-1] > 0.85  # a third by chance
    model, saved = load_model(result["model_path"])
    assert (saved["model"]["task"], saved["model"]["classes"]) == ("multiclass", 3)
    probabilities = Predictor(model, saved).predict(held_out.to_batches(max_chunksize=1000)[0])
    assert probabilities.shape == (1000, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
    hits = (probabilities.argmax(axis=1) == held_out["label"].to_numpy()[:1000]).mean()
    assert hits == pytest.approx(result["val_accuracy"][-1], abs=1e-9)
    with pytest.raises(ValueError, match="a multiclass model needs classes >= 3"):
        train_worker(train, replace(config, classes=2), val)
