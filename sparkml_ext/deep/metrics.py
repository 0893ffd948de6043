"""Validation metrics in torch (exact ROC AUC, accuracy, RMSE), so workers need no sklearn."""

from __future__ import annotations

import math

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half).

    Computed from average ranks (Mann-Whitney U): O(n log n), exact with ties. Labels
    above 0.5 are positives. NaN when only one class is present.
    """
    scores, positive = scores.detach().flatten().double(), labels.detach().flatten() > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()  # 1-based rank of the last score in each tie group
    average_rank = last_rank - (counts.double() - 1) / 2
    rank_sum = average_rank[group][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rmse(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Root mean squared error; NaN for no rows."""
    if predictions.numel() == 0:
        return math.nan
    return float(((predictions.double().flatten() - labels.double().flatten()) ** 2).mean().sqrt())


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose most probable class ([N, classes]) is the label (a class index)."""
    if labels.numel() == 0:
        return math.nan
    return float((probabilities.argmax(dim=1) == labels.long()).double().mean())
