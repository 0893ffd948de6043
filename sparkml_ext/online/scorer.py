"""Score raw events now: validate them, compute their feature columns from the published
histories (`online.features`), run the stored torch model (`deep.inference.Predictor`, the
code batch scoring runs on the executors). No Spark, no HTTP: `online.server` is the HTTP
face of this, and tests and benchmarks call it directly too.

Only models that run without Spark are served: torch, and train-mllib's xgboost pipelines
(their stages read from their files, `online.xgboost_model`). Any other MLlib PipelineModel
(GBT, logistic regression, ...) transforms DataFrames, so it would need a SparkSession and a
job per request; it is refused with that reason.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from sparkml_ext import modelstore
from sparkml_ext.config import PipelineConfig, is_integral_type, is_numeric_type
from sparkml_ext.feature_spec import spec_fingerprint
from sparkml_ext.online.errors import RequestError, ServeError
from sparkml_ext.online.features import (
    EMPTY,
    History,
    OnlineFeatures,
    check_servable,
    epoch_seconds,
    spark_text,
)
from sparkml_ext.online.store import OnlineStore

# What a request may name: a model kind and a version or `latest`, never a path.
MODEL_REFERENCE = re.compile(r"[a-z][a-z0-9_]*/(v[0-9]+|latest)")
SERVED_KINDS = ("torch", "xgboost", "xgboost_regression")
_LOADED_MODELS = 4  # versions a server keeps loaded for requests that name one


@dataclass(frozen=True)
class _Request:
    """One request's validated events, the model it asks for and its events' epoch seconds."""

    events: list[BaseModel]
    model: LoadedModel
    seconds: np.ndarray


class LoadedModel:
    """One stored model version that runs without Spark: torch (weights only) or a
    train-mllib xgboost pipeline (`online.xgboost_model`: JSON and Parquet)."""

    def __init__(self, stored: modelstore.ModelVersion, fingerprint: str):
        self.card = modelstore.read_json(stored, "card.json")
        kind = self.card["model"]
        if kind not in SERVED_KINDS:
            raise ServeError(
                f"model {stored.name} is an MLlib PipelineModel ({kind}): it transforms Spark DataFrames, so "
                "every request would need a SparkSession and a Spark job, far from a request's milliseconds. "
                "Serve a torch model (`sparkml-ext train-torch`) or an xgboost one (train_mllib.model: "
                "xgboost), or score this one in batch with `sparkml-ext score`")
        self.stored = stored
        if self.card.get("feature_spec", fingerprint) != fingerprint:  # cards before stop 26 do not say
            raise ServeError(
                f"model {stored.name} was trained on features of another spec ({self.card['feature_spec']}; "
                f"this pipeline's is {fingerprint}): its columns would mean something else here. Serve it "
                "with the pipeline file it was trained with, or train a model on this spec")
        if kind == "torch":
            from sparkml_ext.deep.inference import Predictor  # torch: only where models run

            self.predictor = Predictor.load(f"{stored.uri}/model.pt")
        else:
            from sparkml_ext.online.xgboost_model import XGBoostPredictor

            self.predictor = XGBoostPredictor(stored.uri, self.card["task"])
        self.classes = self.card.get("classes")


class Scorer:
    """Scores events with a model reference (`torch/latest` follows new versions: `refresh`)."""

    def __init__(self, cfg: PipelineConfig, reference: str, store: OnlineStore):
        if cfg.source.derives_key:
            raise ServeError(f"{cfg.path}: source.key: serving needs a declared key column (it orders events "
                             "of the same second, as the batch job does); this table's key is derived")
        check_servable(cfg)
        self.cfg, self.reference, self.store = cfg, reference, store
        self.features = OnlineFeatures(cfg.features, cfg.source.schema, cfg.source.key)
        self.fingerprint = spec_fingerprint(cfg.features)
        self.validator = TypeAdapter(list[_event_model(cfg, self.features.inputs)])  # built once: costly
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        try:
            self.model = self._load(reference)
        except RequestError as err:
            raise ServeError(str(err)) from None
        missing = sorted(set(self.model.predictor.columns) - {c for columns in self.features.columns.values()
                                                               for c in columns})
        if missing:
            raise ServeError(f"model {self.model.stored.name} reads columns this pipeline's features section does "
                             f"not define: {missing}; serve it with the pipeline file it was trained with")
        self.check_store()

    def check_store(self) -> dict:
        """The store's facts, if they come from this spec (else ServeError saying what to run)."""
        facts = self.store.facts()
        if not facts:
            raise ServeError(f"the online store {getattr(self.store, 'path', '')} holds no publish: "
                             "run `sparkml-ext publish-online` first")
        if facts.get("spec") != self.fingerprint:
            raise ServeError(f"the online store was published from another feature spec ({facts.get('spec')}, "
                             f"this pipeline's is {self.fingerprint}): run `sparkml-ext publish-online`")
        return facts

    def refresh(self) -> bool:
        """Load a newer version of a `<kind>/latest` reference; True when the model changed.
        Requests in flight finish on the model they started with."""
        stored = modelstore.resolve(self.cfg.table_path("models"), self.reference)
        if stored == self.model.stored:
            return False
        self.model = self._load(stored.name)
        return True

    def _load(self, reference: str) -> LoadedModel:
        if not MODEL_REFERENCE.fullmatch(reference):
            raise RequestError(422, f"model: {reference!r} is not a reference like torch/v3 or torch/latest")
        try:
            stored = modelstore.resolve(self.cfg.table_path("models"), reference)
        except FileNotFoundError as err:
            raise RequestError(404, f"model: {err}") from None
        with self._lock:
            if stored.name in self._models:
                self._models.move_to_end(stored.name)
                return self._models[stored.name]
        loaded = LoadedModel(stored, self.fingerprint)
        with self._lock:
            self._models[stored.name] = loaded
            while len(self._models) > _LOADED_MODELS:
                self._models.popitem(last=False)
        return loaded

    def score(self, body: Any) -> dict:
        """A request body (one event, a list of events, or {"events": [...], "model": ...})
        scored: each event's key, score and prediction, and the model and versions used."""
        (answer,) = self.score_many([body])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def score_many(self, bodies: Sequence[Any]) -> list[dict | Exception]:
        """Request bodies scored together, as `score` scores one: one store read, one feature
        computation, one model call per model. Each body gets its answer, or the error (a
        RequestError: a refusal) that is its alone."""
        answers: list[dict | Exception | None] = [None] * len(bodies)
        accepted: list[tuple[int, _Request]] = []
        for i, body in enumerate(bodies):
            try:
                accepted.append((i, self._request(body)))
            except Exception as err:  # noqa: BLE001 - one body's failure (a model that will not load) is its own
                answers[i] = err
        if not accepted:
            return answers
        events = [e for _, request in accepted for e in request.events]
        columns = {name: [getattr(e, name) for e in events] for name in self.features.inputs}
        seconds = np.concatenate([request.seconds for _, request in accepted])
        values = {entity: [None if v is None else spark_text(v) for v in columns[entity]]
                  for entity in self.cfg.features.entities}
        facts, found = self.store.read({entity: [v for v in texts if v is not None] for entity, texts in values.items()})
        if facts.get("spec") != self.fingerprint:
            refused = RequestError(503, "the online store now holds another feature spec's publish; "
                                        "restart the server with its pipeline file")
            return [refused if answer is None else answer for answer in answers]
        decoded = {key: _history(packed) for key, packed in found.items()}  # once per value, not per event
        histories = {entity: [decoded.get((entity, v), EMPTY) for v in texts] for entity, texts in values.items()}
        computed = self.features.compute(columns, seconds, histories)
        computed |= {c: np.array(columns[c], dtype=object) for c in self.cfg.features.categorical}  # as they came
        rows = np.cumsum([0] + [len(request.events) for _, request in accepted])
        by_model: dict[str, list[tuple[int, slice]]] = {}
        for (i, request), start, end in zip(accepted, rows[:-1], rows[1:], strict=True):
            try:
                self._check_times(request.seconds, facts)
                by_model.setdefault(request.model.stored.name, []).append((i, slice(start, end)))
            except RequestError as err:
                answers[i] = err
        loaded = {request.model.stored.name: request.model for _, request in accepted}
        for name, parts in by_model.items():
            model = loaded[name]
            index = np.concatenate([np.arange(part.start, part.stop) for _, part in parts])
            p = model.predictor.predict(pa.RecordBatch.from_pydict(
                {c: computed[c][index] for c in model.predictor.columns}))
            offset = 0
            for i, part in parts:
                size = part.stop - part.start
                answers[i] = {"model": name, "feature_version": facts.get("feature_version"),
                              "bronze_version": facts.get("bronze_version"),
                              "state_newest_event": facts.get("newest_event"),
                              "predictions": _predictions(columns[self.cfg.source.key][part],
                                                          p[offset:offset + size], model)}
                offset += size
        return answers

    def _request(self, body: Any) -> _Request:
        events, reference = self._events(body)
        model = self.model if reference is None else self._served(reference)
        event_time = self.cfg.source.event_time
        seconds = [epoch_seconds(getattr(e, event_time)) for e in events] if event_time else [0] * len(events)
        return _Request(events, model, np.array(seconds, dtype=np.int64))

    def _served(self, reference: str) -> LoadedModel:
        if reference == self.reference:
            return self.model
        try:
            return self._load(reference)
        except ServeError as err:
            raise RequestError(422, f"model: {err}") from None

    def _events(self, body: Any) -> tuple[list[BaseModel], str | None]:
        reference = None
        if isinstance(body, dict) and "events" in body:
            unknown = sorted(set(body) - {"events", "model"})
            if unknown:
                raise RequestError(422, f"{unknown[0]}: unknown key (expected events and, optionally, model)")
            reference, body = body.get("model"), body["events"]
            if reference is not None and not isinstance(reference, str):
                raise RequestError(422, "model: expected a reference like torch/v3")
        raw = [body] if isinstance(body, dict) else body
        if not isinstance(raw, list) or not raw:
            raise RequestError(422, "the body must be an event (an object), a non-empty list of events, "
                                    "or {\"events\": [...]}")
        if len(raw) > self.cfg.online.max_events:
            raise RequestError(413, f"{len(raw)} events in one request; online.max_events allows "
                                    f"{self.cfg.online.max_events}")
        try:
            return self.validator.validate_python(raw), reference
        except ValidationError as err:
            errors = [{"field": _field(e["loc"], len(raw) > 1 or not isinstance(body, dict)),
                       "error": e["msg"]} for e in err.errors()]
            raise RequestError(422, "; ".join(f"{e['field']}: {e['error']}" for e in errors[:5]), errors) from None

    def _check_times(self, seconds: np.ndarray, facts: dict) -> None:
        """Refuse an event whose windows reach before the published histories (they would
        count fewer events than the batch job)."""
        exact_from = facts.get("exact_from")
        if exact_from is None or not len(seconds) or seconds.min() >= exact_from:
            return
        first = int(np.argmin(seconds))
        raise RequestError(422, f"events[{first}].{self.cfg.source.event_time}: before "
                                f"{datetime.fromtimestamp(exact_from, UTC):%Y-%m-%d %H:%M:%S} UTC, "
                                "the earliest time the published histories score exactly (newest published "
                                "event less online.late_tolerance); raise it and publish again")


def _event_model(cfg: PipelineConfig, inputs: list[str]) -> type[BaseModel]:
    """The request's event: each column the features read, typed as source.schema says,
    required (null allowed except for the key and the event time); other fields ignored."""
    required = {cfg.source.key, *([cfg.source.event_time] if cfg.source.event_time else [])}
    fields = {}
    for column in inputs + ([cfg.source.event_time] if cfg.source.event_time else []):
        kind = _python_type(cfg.source.schema[column])
        fields[column] = (kind if column in required else kind | None, ...)
    return create_model("Event", __config__=ConfigDict(extra="ignore"), **fields)


def _python_type(spark_type: str) -> type:
    if spark_type == "boolean":
        return bool
    if is_integral_type(spark_type):
        return int
    if is_numeric_type(spark_type):
        return float
    return {"timestamp": datetime, "date": date}.get(spark_type, str)


def _field(loc: tuple, listed: bool) -> str:
    """A pydantic error location as the request spells it: events[3].i1, or i1 for one event."""
    index, *rest = loc
    name = ".".join(str(part) for part in rest)
    return f"events[{index}].{name}" if listed else name


def _history(packed: bytes) -> History:
    return History.from_arrow(pa.ipc.open_stream(packed).read_all())


def _predictions(keys: list, p: np.ndarray, model: LoadedModel) -> list[dict]:
    """Each event's score and prediction, as the batch score job writes them."""
    task = model.predictor.task
    if task == "multiclass":
        index = p.argmax(axis=1)
        return [{"key": k, "score": float(row.max()), "prediction": float(i), "probability": row.tolist(),
                 "predicted_class": str(model.classes[i]) if model.classes else None}
                for k, row, i in zip(keys, p, index, strict=True)]
    predicted = p if task == "regression" else (p > 0.5).astype(np.float64)
    return [{"key": k, "score": float(s), "prediction": float(c),
             **({"predicted_class": str(model.classes[int(c)])} if model.classes and task != "regression" else {})}
            for k, s, c in zip(keys, p, predicted, strict=True)]
