"""A train-mllib xgboost model scored without Spark.

train-mllib stores xgboost inside an MLlib PipelineModel: our FrequencyEncoder (the raw
categoricals' ids by frequency), a VectorAssembler (numerics, then those ids) and
xgboost.spark's model. Their saved files say everything the Spark stages do: the
vocabularies (Parquet), the assembler's column order and xgboost's own params (JSON
metadata), the booster (xgboost's JSON). This applies them to a batch of feature columns
as the stages do: unseen or null categories id 0, the vector as float32, the booster's margin
through the sigmoid (softmax for several classes) as xgboost.spark's transform does.
No Spark and no pickle: JSON and Parquet only.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sparkml_ext.online.errors import ServeError
from sparkml_ext.online.features import spark_text
from sparkml_ext.storage import filesystem

# card task → the head the scorer reports (deep.inference.Predictor's names)
_TASKS = {"classification": "binary", "multiclass": "multiclass", "regression": "regression"}


class XGBoostPredictor:
    """The stored pipeline's stages, read from `<version>/model`; `predict` as Predictor's."""

    def __init__(self, version_uri: str, card_task: str):
        stages = _stages(f"{version_uri}/model")
        kinds = [kind for kind, _, _ in stages]
        if kinds[-1] not in ("SparkXGBClassifierModel", "SparkXGBRegressorModel") or not set(kinds[:-1]) <= {
                "FrequencyEncoderModel", "VectorAssembler"}:
            raise ServeError(f"{version_uri}: stages {kinds}: only the xgboost pipelines train-mllib writes "
                             "(FrequencyEncoder, VectorAssembler, xgboost) are served")
        self.task = _TASKS[card_task]
        self.vocabularies: dict[str, dict[str, int]] = {}  # encoder output column → value → id
        self.encoded: dict[str, str] = {}  # encoder output column → its input column
        for kind, path, meta in stages:
            params = meta["paramMap"]
            if kind == "FrequencyEncoderModel":
                ids = _vocabularies(path)
                for source, output in zip(params["inputCols"], params["outputCols"], strict=True):
                    self.encoded[output] = source
                    self.vocabularies[output] = ids.get(source, {})
            elif kind == "VectorAssembler":
                self.assembled = list(params["inputCols"])
        xgb = meta.get("defaultParamMap", {}) | meta["paramMap"]  # the last stage's: xgboost's
        self.feature_types = xgb.get("feature_types")
        self.missing = float(xgb.get("missing", "nan"))
        self.booster = _booster(path)
        self.columns = [self.encoded.get(c, c) for c in self.assembled]  # what a batch must hold
        self.numeric = [c for c in self.assembled if c not in self.encoded]

    def predict(self, batch: pa.RecordBatch) -> np.ndarray:
        """The positive class's probability (binary), each class's (multiclass), or the value."""
        import xgboost

        x = np.empty((batch.num_rows, len(self.assembled)), dtype=np.float32)
        for j, column in enumerate(self.assembled):
            if column in self.encoded:
                ids = self.vocabularies[column]
                values = batch.column(self.encoded[column]).to_pylist()
                x[:, j] = [0 if v is None else ids.get(spark_text(v), 0) for v in values]
            else:
                x[:, j] = batch.column(column).to_numpy(zero_copy_only=False)
        data = xgboost.DMatrix(x, missing=self.missing, feature_types=self.feature_types,
                               enable_categorical=self.feature_types is not None)
        margin = self.booster.predict(data, output_margin=True).astype(np.float64)
        if self.task == "regression":
            return margin
        if self.task == "binary":
            return 1.0 / (1.0 + np.exp(-margin))
        shifted = np.exp(margin - margin.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def _stages(pipeline: str) -> list[tuple[str, str, dict]]:
    """(class name, folder, metadata) of each stage of a saved PipelineModel, in order."""
    fs, base = filesystem(f"{pipeline}/stages")
    folders = sorted((i for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.Directory),
                     key=lambda i: int(i.base_name.split("_", 1)[0]))
    stages = []
    for folder in folders:
        uri = f"{pipeline}/stages/{folder.base_name}"
        meta = json.loads(_read(fs, _parts(fs, f"{folder.path}/metadata")[0]).splitlines()[0])  # one JSON line
        stages.append((meta["class"].rpartition(".")[2], uri, meta))
    return stages


def _parts(fs: pafs.FileSystem, folder: str) -> list[str]:
    """The part files Spark wrote into a folder, in order."""
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(folder))
                  if i.type == pafs.FileType.File and i.base_name.startswith("part-"))


def _vocabularies(stage: str) -> dict[str, dict[str, int]]:
    """A FrequencyEncoderModel's table: per input column, value → id."""
    fs, path = filesystem(f"{stage}/data")
    table = pq.read_table(path, filesystem=fs, columns=["column", "value", "id"])
    found: dict[str, dict[str, int]] = {}
    for column, value, id_ in zip(*(table.column(c).to_pylist() for c in ("column", "value", "id")), strict=True):
        found.setdefault(column, {})[value] = id_
    return found


def _booster(stage: str):
    """xgboost.spark's booster: its JSON, in the text file parts Spark wrote (a line each)."""
    import xgboost

    fs, base = filesystem(f"{stage}/model")
    text = "".join(line for part in _parts(fs, base) for line in _read(fs, part).decode().splitlines())
    booster = xgboost.Booster()
    booster.load_model(bytearray(text.encode()))
    return booster


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_file(path) as source:
        return source.read()
