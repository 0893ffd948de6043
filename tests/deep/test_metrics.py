import math

import numpy as np
import pytest
import torch

from sparkml_ext.deep.metrics import roc_auc


def brute_force_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 12, 300).astype(np.float32)  # many ties
    labels = (rng.random(300) < 0.3 + scores / 30).astype(np.float32)
    got = roc_auc(torch.from_numpy(scores), torch.from_numpy(labels))
    assert got == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_auc_extremes():
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.ones(4), labels) == 0.5
    assert math.isnan(roc_auc(torch.rand(3), torch.ones(3)))
