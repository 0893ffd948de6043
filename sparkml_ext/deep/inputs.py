"""What the model learns about its data before training: numeric and label statistics, vocabularies.

Both come from a seeded sample of the training rows that every rank reads itself, so
every rank computes the same values and nothing is broadcast. They travel in the model's
config (`DLRMConfig.numeric_mean`/`numeric_std`/`vocabularies`), so scoring transforms its
inputs exactly as training did.
"""

from __future__ import annotations

import torch

from sparkml_ext.deep.dataset import Batch, ShardDataset
from sparkml_ext.deep.manifest import Manifest


def squash(numeric: torch.Tensor) -> torch.Tensor:
    """sign(x) * log1p(|x|): heavy tails tamed, order and sign kept."""
    return torch.sign(numeric) * torch.log1p(numeric.abs())


def numeric_stats(
    manifest: Manifest, sample_rows: int = 65536, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Mean and std of each squashed numeric feature over a seeded sample of all the rows.

    A constant feature gets std 1.
    """
    sample = squash(_sample(manifest, sample_rows, seed)["numeric"].double())
    std = sample.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return sample.mean(0).tolist(), std.tolist()


def label_stats(manifest: Manifest, sample_rows: int = 65536, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the label over the same kind of seeded sample (std 1 for a constant):
    a regression learns the label standardised with them."""
    label = _sample(manifest, sample_rows, seed)["label"].double()
    std = float(label.std(unbiased=False)) if label.numel() else 0.0
    return (float(label.mean()) if label.numel() else 0.0), (std if std > 1e-12 else 1.0)


def frequent_ids(
    manifest: Manifest, top: int, sample_rows: int = 262144, seed: int = 0
) -> list[list[int]]:
    """Per categorical column, its `top` most frequent non-null ids (0 = null) in a seeded
    sample of the rows, in ascending order: the vocabularies of `DLRMConfig`.

    Ties go to the smaller id, so every rank, reading the same sample, gets the same lists.
    """
    vocabularies = []
    for column in _sample(manifest, sample_rows, seed)["categorical"].T:
        ids, counts = torch.unique(column[column != 0], return_counts=True)  # ids ascending
        most = torch.sort(counts, descending=True, stable=True).indices[:top]
        vocabularies.append(sorted(ids[most].tolist()))
    return vocabularies


def _sample(manifest: Manifest, rows: int, seed: int) -> Batch:
    """Up to `rows` rows as whole 1024-row chunks drawn from every shard, seeded: the same
    on every rank, as each reads it itself (nothing to broadcast)."""
    ds = ShardDataset.from_manifest(
        manifest, batch_size=rows, seed=seed, chunk_rows=1024, shuffle_buffer=rows
    )
    return next(iter(ds))
