"""The function each DDP process runs: shards in, a trained DLRM and its metrics out.

Launched by TorchDistributor or torchrun (one process per GPU or CPU slot), or called
directly for one process. Rank 0 checkpoints every `checkpoint_every` steps; a rerun
with the same `checkpoint_dir` resumes mid-epoch from the newest loadable checkpoint,
which is all the recovery there is (TorchDistributor never retries).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from sparkml_ext.deep import distributed
from sparkml_ext.deep.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sparkml_ext.deep.config import TrainConfig
from sparkml_ext.deep.dataset import Batch, ShardDataset
from sparkml_ext.deep.inputs import frequent_ids, label_stats, numeric_stats
from sparkml_ext.deep.manifest import Manifest, assign_rows
from sparkml_ext.deep.metrics import accuracy, rmse, roc_auc
from sparkml_ext.deep.model import DLRM, DLRMConfig, save_model
from sparkml_ext.deep.shard_reader import read_manifest
from sparkml_ext.storage import join

log = logging.getLogger(__name__)
# What each task is judged by on the validation rows after every epoch (`val_<name>`).
VALIDATION_METRIC = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}


@dataclass
class Progress:
    """Where training stands, beyond weights and data position; checkpointed as primitives."""

    step: int = 0
    epoch_loss: float = 0.0  # summed over ranks and the epoch's steps so far
    epoch_rows: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)  # VALIDATION_METRIC of the task
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False


def train_worker(
    train_manifest: str, cfg: TrainConfig, val_manifest: str | None = None
) -> dict[str, Any]:
    """Train a DLRM on the rows of `train_manifest` (its `_manifest.json` or folder) in this rank.

    `cfg` is every knob (`deep.config.TrainConfig`, picklable), the same on every rank.
    Returns the metrics (the same on every rank): epochs, steps, train_loss, val_loss,
    val_auc (binary), val_accuracy (multiclass) or val_rmse (regression), best_val_loss,
    stopped_early, rows_per_s, resumed_from_step, world_size,
    device (rank 0's), backend, precision (of the forward pass), model_path.
    """
    _configure_torch(cfg)
    ctx = distributed.init(cfg.backend, cfg.device)
    try:
        val = read_manifest(val_manifest) if val_manifest else None
        return Trainer(ctx, cfg, read_manifest(train_manifest), val).run()
    finally:
        distributed.shutdown(ctx)


def _configure_torch(cfg: TrainConfig) -> None:
    """Seeds (the same on every rank) and, when asked, bit-for-bit reproducible kernels."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if cfg.num_threads or cfg.deterministic:
        torch.set_num_threads(cfg.num_threads or 1)


def _steps_per_epoch(manifest: Manifest, world_size: int, batch_size: int) -> int:
    """The same step count on every rank, so no rank waits forever in an all-reduce.

    Ranks differ by at most one row, so this leaves out at most one 1-row batch per
    rank per epoch (a different row each epoch, as the order is reshuffled).
    """
    ranks = assign_rows(manifest.files, world_size)
    steps = min(math.ceil(sum(s.length for s in rank) / batch_size) for rank in ranks)
    if steps == 0:
        raise ValueError(f"{manifest.rows} training rows cannot feed {world_size} ranks")
    return steps


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPUs only; bf16 where supported (no loss scaling needed)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_config(cfg: TrainConfig, train: Manifest, numeric_width: int) -> DLRMConfig:
    """The model's shapes from the knobs, and its input statistics from the training rows."""
    mean, std = (
        numeric_stats(train, seed=cfg.seed) if cfg.normalize_numeric and numeric_width else ([], [])
    )
    target_mean, target_std = label_stats(train, seed=cfg.seed) if cfg.task == "regression" else (0.0, 1.0)
    vocabularies = (
        frequent_ids(train, cfg.vocabulary, seed=cfg.seed)
        if cfg.vocabulary and train.categorical
        else []
    )
    return DLRMConfig(
        num_numeric=numeric_width,
        numeric_mean=tuple(mean),
        numeric_std=tuple(std),
        embedding_sizes=cfg.table_sizes(train.categorical, vocabularies),
        embedding_dim=cfg.embedding_dim,
        bottom_mlp=cfg.bottom_mlp,
        top_mlp=cfg.top_mlp,
        fold_ids=cfg.fold_ids and not vocabularies,
        vocabularies=tuple(tuple(v) for v in vocabularies),
        task=cfg.task,
        classes=cfg.classes if cfg.task == "multiclass" else 0,
        target_mean=target_mean,
        target_std=target_std,
    )


class Trainer:
    """One rank's run: the model, optimizer, data and progress, and the loop over them."""

    def __init__(
        self, ctx: distributed.Context, cfg: TrainConfig, train: Manifest, val: Manifest | None
    ):
        self.ctx, self.cfg, self.manifest = ctx, cfg, train
        options = dict(seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, chunk_rows=cfg.chunk_rows)
        steps = _steps_per_epoch(train, ctx.world_size, cfg.batch_size)
        self.data = ShardDataset.from_manifest(
            train, ctx.rank, ctx.world_size, batch_size=cfg.batch_size, max_batches=steps, **options
        )
        self.val = None
        if val is not None:
            self.val = ShardDataset.from_manifest(
                val,
                ctx.rank,
                ctx.world_size,
                batch_size=cfg.eval_batch_size,
                shuffle=False,
                **options,
            )
        self.model_config = model_config(cfg, train, self.data.numeric_width)
        self.model = DLRM(self.model_config).to(ctx.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=ctx.device.type == "cuda",  # one kernel for all parameters
        )
        self.amp_dtype = _autocast_dtype(cfg.precision, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.pin_memory = ctx.device.type == "cuda"
        # on a GPU the loader reads in a thread while kernels run; on CPUs it would only
        # take cores from the step
        self.read_ahead = 4 if self.pin_memory else 0
        self.progress = Progress()
        # this rank's [loss sum, rows] since the last fold into the progress
        self.pending = torch.zeros(2, dtype=torch.float64, device=ctx.device)

    # -- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self.data.state_dict(),
            "data_plan": self._data_plan(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["model_config"] != self.model_config.to_dict():
            raise ValueError(
                f"the checkpoints in {self.cfg.checkpoint_dir} are of another model "
                f"({state['model_config']} != {self.model_config.to_dict()}); "
                "use a new checkpoint_dir"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        if state["data_plan"] == self._data_plan():
            self.data.load_state_dict(state["data"])
        else:  # batch b of this epoch now means other rows: only the epoch start is well defined
            log.warning(
                "the data plan changed since the checkpoint (%s -> %s): epoch %d restarts",
                state["data_plan"],
                self._data_plan(),
                state["data"]["epoch"],
            )
            self.data.set_epoch(state["data"]["epoch"])
            self.progress.epoch_loss, self.progress.epoch_rows = 0.0, 0.0
        set_rng_state(state["rng"])

    def _data_plan(self) -> dict[str, Any]:
        """What fixes which rows a (epoch, batch) position stands for, on every rank."""
        cfg, m = self.cfg, self.manifest
        keys = ("seed", "batch_size", "shuffle_buffer", "chunk_rows")
        files = [[f.path, f.rows] for f in m.files]
        return {
            "world_size": self.ctx.world_size,
            "files": files,
            **{k: getattr(cfg, k) for k in keys},
        }

    def save(self) -> None:
        """Rank 0 writes a checkpoint (all ranks hold the same weights and position)."""
        if self.ctx.is_main:
            cfg = self.cfg
            save_checkpoint(
                self.state_dict(), cfg.checkpoint_dir, self.progress.step, cfg.keep_checkpoints
            )

    def resume(self) -> int:
        """Load the newest loadable checkpoint that rank 0 finds; the step it was taken at, or 0."""
        if not self.cfg.checkpoint_dir:
            return 0
        found = latest_checkpoint(self.cfg.checkpoint_dir) if self.ctx.is_main else None
        path = distributed.broadcast(self.ctx, str(found[0]) if found else None)
        if path is None:
            return 0
        self.load_state_dict(found[1] if found else load_checkpoint(path))
        if self.ctx.is_main:
            log.info(
                "resumed from %s (step %d, epoch %d)", path, self.progress.step, self.data.epoch
            )
        return self.progress.step

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        resumed_from = self.resume()
        ctx, cfg, data, progress = self.ctx, self.cfg, self.data, self.progress
        ddp = self.model
        if ctx.distributed:
            ddp = DistributedDataParallel(
                self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
            )
        rows, seconds = 0.0, 0.0
        while data.epoch < cfg.epochs and not progress.stopped_early:
            ddp.train()
            started = time.perf_counter()
            for batch in data.batches(cfg.num_workers, self.pin_memory, self.read_ahead):
                self.pending += self._step(ddp, _to(batch, ctx.device))
                progress.step += 1
                if cfg.checkpoint_dir and progress.step % cfg.checkpoint_every == 0:
                    rows += self._fold()
                    self.save()
            rows += self._fold()
            seconds += time.perf_counter() - started
            self._end_epoch()
            data.set_epoch(data.epoch + 1)
        if cfg.checkpoint_dir:
            self.save()  # so that a rerun finds the run finished (or extends it to more epochs)
        return {
            "epochs": len(progress.train_loss),
            "steps": progress.step,
            "train_loss": progress.train_loss,
            "val_loss": progress.val_loss,
            f"val_{VALIDATION_METRIC[cfg.task]}": progress.val_metric,
            "best_val_loss": progress.best_val_loss if progress.val_loss else None,
            "stopped_early": progress.stopped_early,
            "rows_per_s": rows / seconds if seconds else 0.0,
            "resumed_from_step": resumed_from,
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "backend": distributed.backend(ctx),
            "precision": str(self.amp_dtype or torch.float32).removeprefix("torch."),
            "model_path": distributed.broadcast(ctx, self._save_model()),
        }

    def _step(self, ddp: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """One optimizer step; returns [loss sum, rows] of the batch."""
        with self._autocast():
            logits = ddp(batch["numeric"], batch["categorical"])
        loss = self.model.loss(logits.float(), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        rows = len(logits)
        return torch.stack(
            [loss.detach().double() * rows, loss.new_tensor(rows, dtype=torch.float64)]
        )

    def _autocast(self) -> torch.autocast:
        dtype = self.amp_dtype
        return torch.autocast(self.ctx.device.type, dtype=dtype, enabled=dtype is not None)

    def _fold(self) -> float:
        """Add every rank's pending loss and rows to the epoch's totals; all ranks call it."""
        loss, rows = distributed.all_sum(self.ctx, self.pending).tolist()
        self.progress.epoch_loss += loss
        self.progress.epoch_rows += rows
        self.pending.zero_()
        return rows

    def _end_epoch(self) -> None:
        """Record the epoch's losses, validate, and decide on early stopping."""
        p = self.progress
        p.train_loss.append(p.epoch_loss / max(p.epoch_rows, 1.0))
        p.epoch_loss, p.epoch_rows = 0.0, 0.0
        if self.val is not None:
            loss, metric = self._evaluate()
            p.val_loss.append(loss)
            p.val_metric.append(metric)
            if loss < p.best_val_loss - self.cfg.min_delta:
                p.best_val_loss, p.bad_epochs = loss, 0
            else:
                p.bad_epochs += 1
            p.stopped_early = 0 < self.cfg.patience <= p.bad_epochs
        if self.ctx.is_main:
            message = f"epoch {self.data.epoch} (step {p.step}): train loss {p.train_loss[-1]:.5f}"
            if self.val is not None:
                name = VALIDATION_METRIC[self.cfg.task]
                message += f", val loss {p.val_loss[-1]:.5f}, val {name} {p.val_metric[-1]:.4f}"
            log.info(message)

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        """Validation loss and the task's metric (exact AUC, accuracy, RMSE) over every rank's
        share of the validation rows."""
        self.model.eval()
        self.val.set_epoch(0)
        logits, labels = [], []
        for batch in self.val.batches(self.cfg.num_workers, self.pin_memory, self.read_ahead):
            batch = _to(batch, self.ctx.device)
            with self._autocast():
                logits.append(self.model(batch["numeric"], batch["categorical"]).float())
            labels.append(batch["label"])
        none = (0, self.model_config.classes) if self.cfg.task == "multiclass" else (0,)  # a rank's empty share
        logits = torch.cat(logits) if logits else torch.zeros(none, device=self.ctx.device)
        labels = torch.cat(labels) if labels else torch.zeros(0, device=self.ctx.device)
        loss = self.model.loss(logits, labels, reduction="sum")
        loss_sum, rows = distributed.all_sum(
            self.ctx, torch.stack([loss, loss.new_tensor(len(labels))])
        ).tolist()
        outputs = distributed.all_gather_rows(self.ctx, logits)
        labels = distributed.all_gather_rows(self.ctx, labels)
        if self.cfg.task == "regression":
            metric = rmse(self.model.prediction(outputs), labels)
        elif self.cfg.task == "multiclass":
            metric = accuracy(self.model.prediction(outputs), labels)
        else:
            metric = roc_auc(outputs, labels)
        return loss_sum / max(rows, 1.0), metric

    def _save_model(self) -> str | None:
        if not (self.cfg.output_dir and self.ctx.is_main):
            return None
        path = join(self.cfg.output_dir, "model.pt")
        m = self.manifest
        columns = {"numeric": list(m.numeric), "categorical": list(m.categorical), "label": m.label}
        save_model(self.model, path, columns)
        return path
