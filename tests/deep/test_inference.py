"""Torch inference said once: the same probabilities from Arrow batches and pandas frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from sparkml_ext.deep.inference import Predictor
from sparkml_ext.deep.model import DLRM, DLRMConfig, save_model

COLUMNS = {"numeric": ["n0", "n1"], "categorical": ["c0", "c1"]}


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(num_numeric=2, embedding_sizes=(5, 7), embedding_dim=4))
    path = tmp_path / "model.pt"
    save_model(model, path, COLUMNS)
    return model.eval(), str(path)


def test_nulls_become_zero_and_probabilities_match_the_model(saved):
    model, path = saved
    batch = pa.RecordBatch.from_pydict({
        "other": ["a", "b", "c"],  # columns the model does not read are ignored
        "c1": pa.array([1, None, 6], pa.int32()),
        "n0": pa.array([0.5, None, -2.0], pa.float64()),
        "n1": pa.array([1.0, 2.0, 3.0], pa.float32()),
        "c0": pa.array([4, 2, None], pa.int64()),
    })
    got = Predictor.load(path).predict(batch)
    dense = torch.tensor([[0.5, 1.0], [0.0, 2.0], [-2.0, 3.0]])
    ids = torch.tensor([[4, 1], [2, 0], [0, 6]])
    with torch.inference_mode():
        want = torch.sigmoid(model(dense, ids)).double().numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_pandas_frame_with_nan_gives_the_same_answer(saved):
    _, path = saved
    frame = pd.DataFrame({"n0": [0.5, np.nan], "n1": [1.0, 2.0], "c0": [4.0, np.nan], "c1": [1, 3]})
    predictor = Predictor.load(path)
    from_pandas = predictor.predict(pa.RecordBatch.from_pandas(frame, preserve_index=False))
    filled = predictor.predict(pa.RecordBatch.from_pandas(frame.fillna(0), preserve_index=False))
    np.testing.assert_array_equal(from_pandas, filled)


def test_missing_columns_are_named(saved):
    _, path = saved
    with pytest.raises(ValueError, match=r"lacks: \['c1', 'n1'\]"):
        Predictor.load(path).predict(pa.RecordBatch.from_pydict({"n0": [1.0], "c0": [1]}))
