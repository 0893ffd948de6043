"""A DLRM-style model built from a plain config, so `state_dict` + config rebuild it.

Its output is a binary classifier's logit, one logit per class of a multiclass one, or, for
a continuous label, the label standardised with the training rows' mean and std (`task`):
the config says which, so the loss, the prediction and scoring follow it.

Each categorical column has its own embedding table, and the tables are rows of one
tensor looked up once per batch (one kernel instead of one per column, which is what
bounds a small model's step on a GPU); a bottom MLP maps the numeric features into the
same space; the pairwise dot products of all these vectors, next to
the bottom output, feed a top MLP. A first-order weight per categorical id (the "wide"
part of Wide & Deep and DeepFM) is added to the top MLP's logit: a category's main effect
is one learned number instead of something the dot products must reconstruct.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from sparkml_ext.deep.checkpoint import save_whole
from sparkml_ext.deep.config import TASKS
from sparkml_ext.deep.inputs import squash


@dataclass(frozen=True)
class DLRMConfig:
    """Shapes of the model. `embedding_sizes` has one table size per categorical column.

    `numeric_mean`/`numeric_std`: numeric inputs are squashed (sign(x) * log1p(|x|)) and
    standardised with these, so raw counts and means of any scale train well; the
    statistics live in the config, so scoring applies the same transform.

    `fold_ids`: ids of hashed columns (1 + hash mod buckets, 0 = null) may exceed a table;
    folded, id k >= 1 uses row 1 + (k - 1) mod (size - 1), as if hashed into fewer buckets,
    and ids below the size keep their row. Not folded, ids outside a table are the unknown id 0.

    `vocabularies`: per categorical column, the sorted ids that get rows of their own (the
    column's most frequent, see `inputs.frequent_ids`): the i-th uses row i + 1, any other
    id (rare, unseen or null) row 0. Each table then has len(vocabulary) + 1 rows. Unlike
    folding, frequent values never share a row, which is what their effects need.
    """

    num_numeric: int
    embedding_sizes: tuple[int, ...]
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (64, 32)
    fold_ids: bool = False
    numeric_mean: tuple[float, ...] = ()  # of squash(numeric) over training rows; () = raw inputs
    numeric_std: tuple[float, ...] = ()
    vocabularies: tuple[tuple[int, ...], ...] = ()  # () = ids index the tables directly
    task: str = "binary"  # one of TASKS
    classes: int = 0  # multiclass: how many (3 or more; labels are class indexes)
    target_mean: float = 0.0  # regression: the output is (label - target_mean) / target_std
    target_std: float = 1.0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if (self.task == "multiclass") != (self.classes >= 3):
            raise ValueError(f"a multiclass model needs classes >= 3 (two make a binary one), "
                             f"any other none; got task {self.task!r} with classes {self.classes}")
        if self.target_std <= 0:
            raise ValueError(f"target_std must be > 0, got {self.target_std}")
        if self.num_numeric < 0 or (self.num_numeric == 0 and not self.embedding_sizes):
            raise ValueError("the model needs at least one numeric or categorical feature")
        if any(s < 1 for s in self.embedding_sizes) or self.embedding_dim < 1:
            raise ValueError(
                f"embedding sizes and dim must be >= 1, got {self.embedding_sizes} "
                f"and {self.embedding_dim}"
            )
        stats = (len(self.numeric_mean), len(self.numeric_std))
        if stats != (0, 0) and stats != (self.num_numeric,) * 2:
            raise ValueError(
                f"numeric_mean and numeric_std need {self.num_numeric} values each, got {stats}"
            )
        if any(v <= 0 for v in self.numeric_std):
            raise ValueError(f"numeric_std must be > 0, got {self.numeric_std}")
        if self.fold_ids and any(s < 2 for s in self.embedding_sizes):
            raise ValueError(f"folding ids needs tables of >= 2 rows, got {self.embedding_sizes}")
        if self.vocabularies:
            if self.fold_ids:
                raise ValueError("ids are either folded or looked up in vocabularies, not both")
            sizes = tuple(len(v) + 1 for v in self.vocabularies)
            if sizes != self.embedding_sizes:
                raise ValueError(
                    f"with vocabularies the table sizes must be {sizes}, got {self.embedding_sizes}"
                )
            if any(list(v) != sorted(set(v)) for v in self.vocabularies):
                raise ValueError("each vocabulary must hold distinct ids in ascending order")

    @classmethod
    def from_dict(cls, raw: dict) -> DLRMConfig:
        """From a plain dict (e.g. a checkpoint's); lists become tuples, unknown keys fail."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: _tuples(v) for k, v in raw.items()})

    @property
    def outputs(self) -> int:
        """The width of the model's output: a logit per class, else one number."""
        return self.classes if self.task == "multiclass" else 1

    def to_dict(self) -> dict:
        """Plain lists and ints: safe for `torch.load(weights_only=True)` and JSON."""
        return {k: _lists(v) for k, v in asdict(self).items()}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, list | tuple) else value


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """logit = top([bottom(numeric), pairwise dots of {bottom(numeric), embeddings}])
    + sum of the categorical ids' first-order weights."""

    def __init__(self, config: DLRMConfig):
        super().__init__()
        self.config = config
        d = config.embedding_dim
        sizes = torch.tensor(config.embedding_sizes, dtype=torch.int64)
        self.embedding = nn.Embedding(int(sizes.sum()), d) if len(sizes) else None
        self.first_order = nn.Embedding(int(sizes.sum()), config.outputs) if len(sizes) else None
        if self.first_order is not None:
            nn.init.zeros_(self.first_order.weight)  # start as the plain DLRM
        self.register_buffer("table_sizes", sizes, persistent=False)
        self.register_buffer("table_starts", sizes.cumsum(0) - sizes, persistent=False)
        # the vocabularies as one sorted [columns, longest] tensor, each padded at its end
        longest = max((len(v) for v in config.vocabularies), default=0) or 1
        pad = torch.iinfo(torch.int64).max
        self.register_buffer(
            "vocabulary",
            torch.tensor([[*v, *[pad] * (longest - len(v))] for v in config.vocabularies],
                         dtype=torch.int64).reshape(len(config.vocabularies), longest),
            persistent=False,
        )
        self.register_buffer(
            "vocabulary_sizes",
            torch.tensor([len(v) for v in config.vocabularies], dtype=torch.int64),
            persistent=False,
        )
        self.bottom = (
            _mlp([config.num_numeric, *config.bottom_mlp, d], last_activation=True)
            if config.num_numeric
            else None
        )
        self.register_buffer(
            "numeric_mean", torch.tensor(config.numeric_mean, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "numeric_std", torch.tensor(config.numeric_std, dtype=torch.float32), persistent=False
        )
        vectors = len(config.embedding_sizes) + (1 if self.bottom is not None else 0)
        pairs = torch.triu_indices(vectors, vectors, offset=1)
        self.register_buffer("pairs", pairs, persistent=False)
        top_in = pairs.shape[1] + (d if self.bottom is not None else 0)
        self.top = _mlp([top_in, *config.top_mlp, config.outputs], last_activation=False)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """numeric float [B, num_numeric], categorical int [B, columns] -> outputs [B]
        ([B, classes] for a multiclass model)."""
        if self.config.vocabularies:
            ids = self._vocabulary_rows(categorical)
        elif self.config.fold_ids:
            ids = torch.where(categorical > 0, 1 + (categorical - 1) % (self.table_sizes - 1), 0)
        else:  # ids outside a table (new categories, negative values) are the unknown id 0
            ids = torch.where((categorical >= 0) & (categorical < self.table_sizes), categorical, 0)
        if len(self.numeric_std):
            numeric = (squash(numeric) - self.numeric_mean) / self.numeric_std
        dense = [self.bottom(numeric)] if self.bottom is not None else []
        parts = [d.unsqueeze(1) for d in dense]
        if self.embedding is not None:
            parts.append(self.embedding(ids + self.table_starts))
        vectors = torch.cat(parts, dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        logit = self.top(torch.cat([*dense, dots], dim=1))
        if self.first_order is not None:
            logit = logit + self.first_order(ids + self.table_starts).sum(dim=1)
        return logit if self.config.task == "multiclass" else logit.squeeze(1)

    def loss(self, output: torch.Tensor, label: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The training loss of `forward`'s output against the labels: log loss of the
        logit(s), or squared error on the standardised label."""
        if self.config.task == "multiclass":
            return nn.functional.cross_entropy(output, label.long(), reduction=reduction)
        if self.config.task == "regression":
            target = (label - self.config.target_mean) / self.config.target_std
            return nn.functional.mse_loss(output, target, reduction=reduction)
        return nn.functional.binary_cross_entropy_with_logits(output, label, reduction=reduction)

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """What `forward`'s output predicts: the positive class's probability, each class's
        [B, classes], or the label."""
        if self.config.task == "multiclass":
            return torch.softmax(output, dim=1)
        if self.config.task == "regression":
            return output * self.config.target_std + self.config.target_mean
        return torch.sigmoid(output)

    def _vocabulary_rows(self, categorical: torch.Tensor) -> torch.Tensor:
        """[B, columns] ids -> rows: 1 + an id's place in its column's vocabulary, else 0."""
        ids = categorical.T.contiguous()  # searchsorted goes along the last dimension
        place = torch.searchsorted(self.vocabulary, ids)
        last = self.vocabulary.shape[1] - 1
        found = (place < self.vocabulary_sizes.unsqueeze(1)) & (
            self.vocabulary.gather(1, place.clamp(max=last)) == ids
        )
        return torch.where(found, place + 1, 0).T


def save_model(model: DLRM, path: str | os.PathLike, columns: dict[str, Any]) -> None:
    """Write {"state_dict", "config"} in one step (`checkpoint.save_whole`) at a path or URI;
    `columns` says which inputs it was trained on.

    The weights are stored on the CPU, so a model trained on GPUs loads anywhere.
    """
    config = {"model": model.config.to_dict(), "columns": columns}
    weights = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    save_whole({"state_dict": weights, "config": config}, path)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DLRM, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; refuses files that hold anything but weights."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    model = DLRM(DLRMConfig.from_dict(saved["config"]["model"]))
    model.load_state_dict(saved["state_dict"])
    return model, saved["config"]
