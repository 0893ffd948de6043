"""MLlib encoders (pipeline stages) for tabular features, on plain columns (not vectors).

Frequency and target encoding of string categoricals, robust scaling of numerics and
hashed crosses of categoricals. They run as native Spark expressions (no Python UDFs),
compose before a ``VectorAssembler`` and save/load inside a ``Pipeline``/``PipelineModel``.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols, HasLabelCol, HasOutputCols, HasRelativeError
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

OOV_ID = 0  # the id FrequencyEncoder gives to unseen, rare and null values


def _param(name: str, doc: str, converter: Any) -> Param:
    """A Param declared on a mixin, as pyspark's shared Params are."""
    return Param(Params._dummy(), name, doc, typeConverter=converter)


def _check_columns(
    stage: Params,
    dataset: DataFrame,
    needed: Sequence[str],
    n_inputs: int,
    outputs: Sequence[str],
    *,
    adding: bool,
) -> None:
    """Fail before any Spark job runs, with a message naming the stage and the columns."""
    name = type(stage).__name__
    if n_inputs != len(outputs) or len(set(outputs)) != len(outputs):
        raise ValueError(
            f"{name}: {n_inputs} inputs need {n_inputs} distinct outputCols, got {list(outputs)}"
        )
    missing = [c for c in needed if c not in dataset.columns]
    if missing:
        raise ValueError(f"{name}: column(s) {missing} not found in {dataset.columns}")
    clashing = [c for c in outputs if c in dataset.columns] if adding else []
    if clashing:
        raise ValueError(f"{name}: output column(s) {clashing} already exist")


def _per_value(
    dataset: DataFrame, columns: Sequence[str], *aggs: Column, **carry: Column
) -> DataFrame:
    """``aggs`` per (column, value) of all ``columns`` in one pass; null values are left out.

    Melts to (column index, value as string, *carry) and groups once, on the small int
    index rather than the name, which is faster (benchmarks/README.md).
    """
    cells = [
        F.struct(F.lit(i).alias("column"), F.col(c).cast("string").alias("value"),
                 *[v.alias(k) for k, v in carry.items()])
        for i, c in enumerate(columns)
    ]
    names = F.array(*[F.lit(c) for c in columns])
    return (
        dataset.select(F.inline(F.array(*cells)))
        .where(F.col("value").isNotNull())
        .groupBy("column", "value")
        .agg(*aggs)
        .withColumn("column", F.get(names, F.col("column")))
    )


class _ColumnsParams(HasInputCols, HasOutputCols):
    """One output column per input column; setters and validation shared by every stage."""

    def setInputCols(self, value: list[str]) -> Any:
        return self._set(inputCols=value)

    def setOutputCols(self, value: list[str]) -> Any:
        return self._set(outputCols=value)

    def _column_pairs(
        self, dataset: DataFrame, *needed: str, adding: bool
    ) -> list[tuple[str, str]]:
        inputs, outputs = self.getInputCols(), self.getOutputCols()
        _check_columns(self, dataset, [*inputs, *needed], len(inputs), outputs, adding=adding)
        return list(zip(inputs, outputs))


class _LearnedStateWriter(MLWriter):
    """Params and learned scalars as the usual JSON metadata; a learned table as Parquet."""

    def __init__(self, instance: Any) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        scalars, table = self.instance._learned_state()
        extra = {"learned": scalars, "hasTable": table is not None}
        DefaultParamsWriter.saveMetadata(
            self.instance, path, self.sparkSession, extraMetadata=extra
        )
        if table is not None:
            table.write.parquet(os.path.join(path, "data"))


class _LearnedStateReader(MLReader):
    """Rebuilds a model as ``cls(**scalars[, table=Parquet data])`` and restores its Params."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        kwargs = dict(metadata["learned"])
        if metadata["hasTable"]:
            kwargs["table"] = self.sparkSession.read.parquet(os.path.join(path, "data"))
        model = self.cls(**kwargs)
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


class _LearnedStatePersistence(MLReadable, MLWritable):
    """Save/load for models that define ``_learned_state() -> (scalars, table or None)``."""

    def write(self) -> MLWriter:
        return _LearnedStateWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _LearnedStateReader(cls)


class _LookupModel(Model, _ColumnsParams, _LearnedStatePersistence):
    """Maps each input value through a learned ``table`` of (column, value, count, <stat>).

    Lookup is a broadcast hash join per column, not a map literal (``map_from_arrays`` of
    two array literals + ``try_element_at``): the join was several times faster in every
    size measured (benchmarks/README.md), and the literal needs the vocabulary on the
    driver and ships it in every plan and task, while the join keeps it on the executors.
    """

    _stat: str  # the table column that becomes the output

    def __init__(self, table: DataFrame) -> None:
        super().__init__()
        self.table = table

    @abstractmethod
    def _fallback(self) -> Column:
        """The value for inputs missing from the table (unseen, rare or null)."""

    def _output_metadata(self, column: str) -> dict | None:
        """Spark ML attribute metadata for the output of input ``column``, if any."""
        return None

    def _learned_state(self) -> tuple[dict[str, Any], DataFrame | None]:
        return {}, self.table

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs(dataset, adding=True)
        out = dataset
        for i, (src, dst) in enumerate(pairs):
            key = f"{self.uid}_key{i}"
            lookup = self.table.where(F.col("column") == src).select(
                F.col("value").alias(key), F.col(self._stat).alias(dst)
            )
            out = out.join(F.broadcast(lookup), F.col(src).cast("string") == F.col(key), "left")
            out = out.drop(key)
        out = out.withColumns({dst: F.coalesce(F.col(dst), self._fallback()) for _, dst in pairs})
        for src, dst in pairs:
            metadata = self._output_metadata(src)
            if metadata is not None:
                out = out.withMetadata(dst, metadata)
        return out


class _FrequencyEncoderParams(_ColumnsParams):
    minCount: Param[int] = _param(
        "minCount",
        "values seen fewer times than this share the out-of-vocabulary id 0",
        TypeConverters.toInt,
    )
    maxCategories: Param[int] = _param(
        "maxCategories",
        "keep at most this many values per column, the most frequent (ties by value); "
        "the rest get id 0",
        TypeConverters.toInt,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(minCount=1, maxCategories=100_000)

    def getMinCount(self) -> int:
        return self.getOrDefault(self.minCount)

    def getMaxCategories(self) -> int:
        return self.getOrDefault(self.maxCategories)


class FrequencyEncoder(
    Estimator["FrequencyEncoderModel"], _FrequencyEncoderParams,
    DefaultParamsReadable["FrequencyEncoder"], DefaultParamsWritable,
):
    """Integer ids 1..K for string categoricals, by descending frequency; 0 for the rest.

    Frequency order gives stable, meaningful ids (small id = common value) that embedding
    tables and tree models can use, and caps cardinality without hashing collisions.
    All columns are counted in one pass (one ``inline`` + one ``groupBy``).
    """

    @keyword_only
    def __init__(
        self, *, inputCols: list[str] | None = None, outputCols: list[str] | None = None,
        minCount: int = 1, maxCategories: int = 100_000,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def setMinCount(self, value: int) -> FrequencyEncoder:
        return self._set(minCount=value)

    def setMaxCategories(self, value: int) -> FrequencyEncoder:
        return self._set(maxCategories=value)

    def _fit(self, dataset: DataFrame) -> FrequencyEncoderModel:
        self._column_pairs(dataset, adding=False)
        counts = _per_value(dataset, self.getInputCols(), F.count("*").alias("count")).where(
            F.col("count") >= self.getMinCount()
        )
        rank = Window.partitionBy("column").orderBy(F.desc("count"), F.asc("value"))
        vocabulary = counts.withColumn("id", F.row_number().over(rank)).where(
            F.col("id") <= self.getMaxCategories()
        )
        # localCheckpoint: the model is the learned table, not a plan over the training data
        # (it lives on the executors until saved; save models you keep).
        table = vocabulary.localCheckpoint()
        kept = {r["column"]: r["count"] for r in table.groupBy("column").count().collect()}  # driver-ok: a row per column
        sizes = {c: kept.get(c, 0) + 1 for c in self.getInputCols()}
        return self._copyValues(FrequencyEncoderModel(table, sizes))


class FrequencyEncoderModel(_LookupModel, _FrequencyEncoderParams):
    """Learned ``table`` (column, value, count, id) and ``sizes`` (ids per column, 0 included).

    Unseen, rare and null values get 0. Like StringIndexer's, the outputs carry nominal
    ML attributes with ``sizes[column]`` values: OneHotEncoder takes its width from them,
    and tree learners split them as categories (which needs maxBins >= the largest size)
    instead of as numbers whose order means nothing.
    """

    _stat = "id"

    def __init__(self, table: DataFrame, sizes: dict[str, int]) -> None:
        super().__init__(table)
        self.sizes = sizes

    def _fallback(self) -> Column:
        return F.lit(OOV_ID)

    def _learned_state(self) -> tuple[dict[str, Any], DataFrame | None]:
        return {"sizes": self.sizes}, self.table

    def _output_metadata(self, column: str) -> dict | None:
        return {"ml_attr": {"type": "nominal", "num_vals": self.sizes[column]}}


class _TargetEncoderParams(_ColumnsParams, HasLabelCol):
    smoothing: Param[float] = _param(
        "smoothing",
        "weight of the global prior, in rows: (sum + smoothing*prior) / (count + smoothing)",
        TypeConverters.toFloat,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(smoothing=10.0)

    def getSmoothing(self) -> float:
        return self.getOrDefault(self.smoothing)


class TargetEncoder(
    Estimator["TargetEncoderModel"], _TargetEncoderParams,
    DefaultParamsReadable["TargetEncoder"], DefaultParamsWritable,
):
    """Per category, the smoothed mean of ``labelCol``; the global prior for unseen/null values.

    Smoothing pulls rare categories toward the prior so a value seen once does not get
    its single label as a feature. Rows with a null label are ignored.

    Leakage: fitting on the rows you then train on puts each row's own label into its
    feature. Fit on a separate split (or out-of-fold); the feature-engineering job uses
    point-in-time aggregates instead.
    """

    @keyword_only
    def __init__(
        self, *, inputCols: list[str] | None = None, outputCols: list[str] | None = None,
        labelCol: str = "label", smoothing: float = 10.0,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def setLabelCol(self, value: str) -> TargetEncoder:
        return self._set(labelCol=value)

    def setSmoothing(self, value: float) -> TargetEncoder:
        return self._set(smoothing=value)

    def _fit(self, dataset: DataFrame) -> TargetEncoderModel:
        self._column_pairs(dataset, self.getLabelCol(), adding=False)
        label = F.col(self.getLabelCol()).cast("double")
        labelled = dataset.where(label.isNotNull())
        prior = labelled.agg(F.avg(label)).first()[0]  # driver-ok: one number
        if prior is None:
            raise ValueError(f"TargetEncoder: labelCol {self.getLabelCol()!r} is all null")
        smoothing = self.getSmoothing()
        stats = _per_value(
            labelled, self.getInputCols(), F.count("*").alias("count"), F.sum("label").alias("sum"),
            label=label,
        )
        encoding = (F.col("sum") + smoothing * prior) / (F.col("count") + smoothing)
        encodings = stats.select("column", "value", "count", encoding.alias("encoding"))
        return self._copyValues(TargetEncoderModel(encodings.localCheckpoint(), prior=prior))


class TargetEncoderModel(_LookupModel, _TargetEncoderParams):
    """Learned ``table`` (column, value, count, encoding) and the global ``prior``."""

    _stat = "encoding"

    def __init__(self, table: DataFrame, prior: float) -> None:
        super().__init__(table)
        self.prior = prior

    def _fallback(self) -> Column:
        return F.lit(self.prior)

    def _learned_state(self) -> tuple[dict[str, Any], DataFrame | None]:
        return {"prior": self.prior}, self.table


class _RobustScalerParams(_ColumnsParams, HasRelativeError):
    clip: Param[float] = _param(
        "clip",
        "scaled values are clipped to [-clip, clip]",
        TypeConverters.toFloat,
    )
    nullToZero: Param[bool] = _param(
        "nullToZero",
        "output 0 (the median) for null inputs instead of null",
        TypeConverters.toBoolean,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(clip=5.0, nullToZero=False, relativeError=0.001)

    def getClip(self) -> float:
        return self.getOrDefault(self.clip)

    def getNullToZero(self) -> bool:
        return self.getOrDefault(self.nullToZero)


class RobustScaler(
    Estimator["RobustScalerModel"], _RobustScalerParams,
    DefaultParamsReadable["RobustScaler"], DefaultParamsWritable,
):
    """(x - median) / IQR per numeric column, clipped to [-clip, clip].

    Median and IQR ignore outliers that would dominate a mean/stddev scaler, and the clip
    keeps heavy tails from swamping a linear model. Unlike Spark's vector RobustScaler it
    works on plain columns, so it composes with the encoders before a VectorAssembler.
    Nulls are ignored when fitting; a column with IQR 0 is only centred.
    """

    @keyword_only
    def __init__(
        self, *, inputCols: list[str] | None = None, outputCols: list[str] | None = None,
        relativeError: float = 0.001, clip: float = 5.0, nullToZero: bool = False,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def setRelativeError(self, value: float) -> RobustScaler:
        return self._set(relativeError=value)

    def setClip(self, value: float) -> RobustScaler:
        return self._set(clip=value)

    def setNullToZero(self, value: bool) -> RobustScaler:
        return self._set(nullToZero=value)

    def _fit(self, dataset: DataFrame) -> RobustScalerModel:
        self._column_pairs(dataset, adding=False)
        inputs = self.getInputCols()
        non_numeric = [c for c in inputs if not isinstance(dataset.schema[c].dataType, NumericType)]
        if non_numeric:
            raise TypeError(f"RobustScaler: input column(s) {non_numeric} are not numeric")
        probabilities, error = [0.25, 0.5, 0.75], self.getRelativeError()
        quartiles = dataset.approxQuantile(inputs, probabilities, error)  # driver-ok: 3 per column
        empty = [c for c, q in zip(inputs, quartiles) if not q]
        if empty:
            raise ValueError(f"RobustScaler: input column(s) {empty} have no non-null value")
        medians = {c: q[1] for c, q in zip(inputs, quartiles)}
        iqrs = {c: (q[2] - q[0]) or 1.0 for c, q in zip(inputs, quartiles)}
        return self._copyValues(RobustScalerModel(medians=medians, iqrs=iqrs))


class RobustScalerModel(Model, _RobustScalerParams, _LearnedStatePersistence):
    """Learned ``medians`` and ``iqrs``, keyed by input column."""

    def __init__(self, medians: dict[str, float], iqrs: dict[str, float]) -> None:
        super().__init__()
        self.medians = medians
        self.iqrs = iqrs

    def _learned_state(self) -> tuple[dict[str, Any], DataFrame | None]:
        return {"medians": self.medians, "iqrs": self.iqrs}, None

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs(dataset, adding=True)
        clip = self.getClip()
        if_null = F.lit(0.0 if self.getNullToZero() else None).cast("double")

        def scaled(c: str) -> Column:
            z = (F.col(c) - F.lit(self.medians[c])) / F.lit(self.iqrs[c])
            # least/greatest skip nulls, so nulls are handled before clipping.
            clipped = F.least(F.greatest(z, F.lit(-clip)), F.lit(clip))
            return F.when(F.col(c).isNull(), if_null).otherwise(clipped)

        return dataset.withColumns({dst: scaled(src) for src, dst in pairs})


class CategoricalCrosser(
    Transformer, HasOutputCols, DefaultParamsReadable["CategoricalCrosser"], DefaultParamsWritable
):
    """Hashed crossed ids ``pmod(xxhash64(a, b), numBuckets) + 1``; 0 when any input is null.

    Lets a linear model learn interactions (city x device) without a learned vocabulary.
    Ids depend on column order and on the input types (1 and "1" hash differently).
    """

    crosses: Param[list[str]] = _param(
        "crosses",
        "columns to cross, one entry per output column, names joined by ':' (e.g. 'city:device')",
        TypeConverters.toListString,
    )
    numBuckets: Param[int] = _param(
        "numBuckets",
        "number of hash buckets; ids are 1..numBuckets",
        TypeConverters.toInt,
    )

    @keyword_only
    def __init__(
        self, *, crosses: list[str] | None = None, outputCols: list[str] | None = None,
        numBuckets: int = 1 << 18,
    ) -> None:
        super().__init__()
        self._setDefault(numBuckets=1 << 18)
        self._set(**self._input_kwargs)

    def getCrosses(self) -> list[str]:
        return self.getOrDefault(self.crosses)

    def getNumBuckets(self) -> int:
        return self.getOrDefault(self.numBuckets)

    def setCrosses(self, value: list[str]) -> CategoricalCrosser:
        return self._set(crosses=value)

    def setOutputCols(self, value: list[str]) -> CategoricalCrosser:
        return self._set(outputCols=value)

    def setNumBuckets(self, value: int) -> CategoricalCrosser:
        return self._set(numBuckets=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        crosses = [cross.split(":") for cross in self.getCrosses()]
        if any(len(names) < 2 for names in crosses):
            raise ValueError(f"CategoricalCrosser: crosses {self.getCrosses()} need 'a:b' entries")
        outputs = self.getOutputCols()
        needed = [name for names in crosses for name in names]
        _check_columns(self, dataset, needed, len(crosses), outputs, adding=True)
        buckets = F.lit(self.getNumBuckets())

        def crossed(names: list[str]) -> Column:
            cols = [F.col(n) for n in names]
            any_null = reduce(or_, [c.isNull() for c in cols])
            return F.when(any_null, 0).otherwise(F.pmod(F.xxhash64(*cols), buckets) + 1).cast("int")

        return dataset.withColumns({out: crossed(names) for names, out in zip(crosses, outputs)})
