"""Torch inference, said once: a stored model's feature columns in, its predictions out (the
positive class's probability of a binary model, the label of a regression).

Batch scoring (`bridge.predict`, on Spark's executors) and the MLflow pyfunc (`tracking`)
both call `Predictor.predict`, so a stored model scores the same wherever it runs. The
model's own column list picks its inputs; each column becomes a tensor column as a whole
(no per-row step), and nulls become 0, as in training.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import torch

from sparkml_ext.deep.model import DLRM, load_model
from sparkml_ext.deep.shard_reader import column_parts
from sparkml_ext.storage import read_whole


class Predictor:
    """A model saved by `deep.model.save_model`, in eval mode, with the columns it reads."""

    def __init__(self, model: DLRM, config: dict):
        self.model = model.eval()
        self.numeric = list(config["columns"]["numeric"])
        self.categorical = list(config["columns"]["categorical"])
        self.columns = self.numeric + self.categorical
        self.task = model.config.task

    @classmethod
    def load(cls, uri: str) -> Predictor:
        """The model file at a local path or any URI pyarrow opens, loaded with weights only."""
        return cls(*load_model(io.BytesIO(read_whole(uri))))

    def predict(self, batch: pa.RecordBatch) -> np.ndarray:
        """The predictions (float64) of a batch holding the model's columns."""
        missing = sorted(set(self.columns) - set(batch.schema.names))
        if missing:
            raise ValueError(f"the torch model needs columns the input lacks: {missing}")
        dense = np.empty((batch.num_rows, len(self.numeric)), dtype=np.float32)
        ids = np.empty((batch.num_rows, len(self.categorical)), dtype=np.int64)
        for out, names in ((dense, self.numeric), (ids, self.categorical)):
            for j, name in enumerate(names):
                out[:, j] = column_parts(pa.chunked_array([batch.column(name)]), name)[0]
        with torch.inference_mode():
            output = self.model(torch.from_numpy(dense), torch.from_numpy(ids))
            return self.model.prediction(output).double().numpy()
