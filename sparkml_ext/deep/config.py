"""The knobs of the DDP worker: one frozen dataclass, the same on every rank.

It imports neither torch nor pyspark, so the pipeline config extends it
(`sparkml_ext.config.TrainTorchConfig` adds the driver's own knobs) and a knob is typed,
defaulted and checked once, from the YAML file to `deep.train.train_worker`. A bad value
raises ValueError as "<key>: <problem>"; the pipeline loader adds the file and section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The model's heads. binary: labels 0/1, the output a logit, the prediction the positive
# class's probability; multiclass: labels 0..classes-1 (class indexes), one logit per class,
# the prediction their probabilities; regression: any number, the output the standardised
# label, the prediction the label.
TASKS = ("binary", "multiclass", "regression")
# Fields set for each run by whoever launches the ranks: train-torch derives them from the
# pipeline (paths from the checkpoint root, the device from use_gpu, table sizes from
# features.hash_buckets), so a pipeline file cannot set them.
PER_RUN = {"per_run": True}


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of `train_worker`."""

    epochs: int = 2
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    shuffle_buffer: int = 65536  # rows permuted together (rounded up to whole batches)
    chunk_rows: int = 8192  # unit of the per-epoch shuffled order of the shards
    num_workers: int = 0  # DataLoader worker processes per rank
    # > 0: each categorical column's `vocabulary` most frequent ids get rows of their own and
    # the rest share row 0 (DLRMConfig.vocabularies); embedding_sizes and fold_ids are unused
    vocabulary: int | None = None
    normalize_numeric: bool = True  # squash + standardise numerics with training-row statistics
    task: Literal["binary", "multiclass", "regression"] = "binary"  # one of TASKS
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (64, 32)
    patience: int = 0  # epochs without val-loss improvement before stopping; 0 = never stop
    min_delta: float = 0.0  # smallest val-loss drop that counts as an improvement
    checkpoint_every: int = 1000  # steps
    keep_checkpoints: int = 3
    backend: Literal["gloo", "nccl"] | None = None  # None = nccl with CUDA, else gloo
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16, else fp16, on GPU
    deterministic: bool = False  # seeded, deterministic kernels, one CPU thread
    num_threads: int | None = None  # torch intra-op threads per process; None = torch's default
    # table size per categorical column: an int for all, or {column: largest id + 1}
    embedding_sizes: int | dict[str, int] | None = field(default=None, metadata=PER_RUN)
    fold_ids: bool = field(default=False, metadata=PER_RUN)  # see DLRMConfig.fold_ids
    classes: int = field(default=0, metadata=PER_RUN)  # multiclass: how many (labels 0..classes-1)
    # auto = this rank's GPU when CUDA is available
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=PER_RUN)
    # shared by all ranks; None = no checkpoints, no resume
    checkpoint_dir: str | None = field(default=None, metadata=PER_RUN)
    output_dir: str | None = field(default=None, metadata=PER_RUN)  # for model.pt; None = not saved

    def __post_init__(self) -> None:
        for key in ("bottom_mlp", "top_mlp"):  # any sequence (a JSON list) becomes a tuple
            object.__setattr__(self, key, tuple(getattr(self, key)))
            if any(width < 1 for width in getattr(self, key)):
                raise ValueError(f"{key}: layer widths must be at least 1, got {getattr(self, key)}")
        require_at_least(self, {
            "epochs": 1, "batch_size": 1, "eval_batch_size": 1, "shuffle_buffer": 1, "chunk_rows": 1,
            "num_workers": 0, "vocabulary": 1, "embedding_dim": 1, "patience": 0,
            "checkpoint_every": 1, "keep_checkpoints": 1, "num_threads": 1,
        })
        choices = {"backend": ("gloo", "nccl", None), "precision": ("auto", "fp32", "bf16", "fp16"),
                   "task": (*TASKS, None),  # None: train-torch decides from the label
                   "device": ("auto", "cpu", "cuda")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of "
                                 f"{', '.join(map(str, allowed))}")

    def table_sizes(
        self, categorical: tuple[str, ...], vocabularies: list[list[int]]
    ) -> tuple[int, ...]:
        """The embedding table size of each categorical column."""
        if vocabularies:
            return tuple(len(v) + 1 for v in vocabularies)
        if not categorical:
            return ()
        sizes = self.embedding_sizes
        if sizes is None:
            raise ValueError(
                "embedding_sizes: required for categorical columns "
                f"{list(categorical)}: an int for all, or {{column: largest id + 1}}"
            )
        if isinstance(sizes, int):
            return (sizes,) * len(categorical)
        missing = [c for c in categorical if c not in sizes]
        if missing:
            raise ValueError(f"embedding_sizes: no size for columns {missing}")
        return tuple(sizes[c] for c in categorical)


def require_at_least(knobs: object, minimums: dict[str, int]) -> None:
    """Raise "<key>: must be at least <n>" for the first knob below its minimum (None passes)."""
    for key, least in minimums.items():
        value = getattr(knobs, key)
        if value is not None and value < least:
            raise ValueError(f"{key}: must be at least {least}, got {value}")
