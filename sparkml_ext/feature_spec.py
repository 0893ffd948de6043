"""The feature table's contract: which columns it holds, their fixed-point widths, the spec's fingerprint.

The features job writes the table; the training jobs read it; online serving computes its
columns for new events. All need the same column names and fixed-point widths, and training
must refuse a table that another spec (or another version of the feature code) built, so
the contract lives here, below them all, and without Spark (`feature_table` reads which spec
and bronze version built a table).
"""

from __future__ import annotations

import math
from dataclasses import asdict

from sparkml_ext.config import FeaturesConfig, fingerprint, is_integral_type

JOB = "features"  # the job name in the feature table's commit metadata
# Part of the spec fingerprint: bump it when a feature's definition changes in code, so
# a table built by the old code is never extended by the new one.
DEFINITIONS_VERSION = 5  # 5: per-column numeric transforms, log1p keeps the sign
# Window means and label rates are summed as longs in units of 2^-24 (rounding error below
# 3e-8 per value), fewer bits for a column whose values reach past 2^8: exact differences,
# and room for at least 2^31 events per entity (2.7e10 at log1p's default clip of 20). The
# batch job (features.py) and online serving (online/features.py) both sum in these units.
FIXED_POINT_BITS = 24


def fixed_point_bits(bound: float) -> int:
    """Binary digits kept of values within ±bound: 24, fewer when bound * 2^24 would pass
    2^32, so that a running sum of 2^31 of them still fits a long."""
    return max(0, min(FIXED_POINT_BITS, 32 - math.ceil(math.log2(max(bound, 1.0)))))


def label_bits(label_type: str) -> int:
    """The fixed-point digits of a label rate's sums: none for a whole-number label (0/1,
    counts: summed as they are), FIXED_POINT_BITS for any other."""
    return 0 if is_integral_type(label_type) else FIXED_POINT_BITS


def numeric_names(spec: FeaturesConfig) -> dict[str, str]:
    """Each numeric column's feature name: `log_<column>` for log1p, the column's own name
    for a value taken as it is."""
    return {c: f"log_{c}" if n.transform == "log1p" else c for c, n in spec.numeric.items()}


def aggregate_name(entity: str, what: str, window: str | None = None, column: str | None = None) -> str:
    """A window feature's name, derived from the entity (and the statistic, column and window):
    `<entity>_events_<w>`, `<entity>_label_rate_<w>`, `<entity>_<statistic>_<column>_<w>`,
    `<entity>_log_seconds_since_prev`, `<entity>_no_recent_event`. The features job names its
    columns with it, and everything that reads them asks it."""
    return "_".join(part for part in (entity, what, column, window) if part)


def entity_columns(spec: FeaturesConfig, entity: str) -> list[str]:
    """One entity's window columns, in the order the features job writes them."""
    history = spec.entities[entity]
    columns = []
    for window in history.windows:
        columns += [aggregate_name(entity, "events", window)]
        columns += [aggregate_name(entity, "label_rate", window)] if spec.label_rate else []
        columns += [aggregate_name(entity, statistic, window, column)
                    for column, statistics in history.aggregates.items() for statistic in statistics]
    return columns + [aggregate_name(entity, "log_seconds_since_prev"), aggregate_name(entity, "no_recent_event")]


def feature_columns(spec: FeaturesConfig) -> dict[str, list[str]]:
    """The model-facing columns the feature table holds, by kind."""
    return {
        "numeric": list(numeric_names(spec).values())
        + [f"isnull_{c}" for c in spec.numeric]
        + [column for entity in spec.entities for column in entity_columns(spec, entity)],
        "categorical_ids": [f"{c}_id" for c in spec.categorical],
        "categorical_raw": list(spec.categorical),
    }


def spec_fingerprint(spec: FeaturesConfig) -> str:
    """What built a feature table: the spec and the definitions' code version."""
    spec_fields = asdict(spec)
    # label_rate joined the spec after definitions 5, when every table had it on: only
    # "off" enters the fingerprint, so the tables built before keep theirs.
    if not spec_fields.pop("label_rate"):
        spec_fields["label_rate"] = False
    return fingerprint({"spec": _as_one_entity_spec(spec_fields) or spec_fields, "definitions": DEFINITIONS_VERSION})


def _as_one_entity_spec(spec_fields: dict) -> dict | None:
    """A spec that the files before `entities` could state (at most one entity, means only)
    in their fields, so that the tables they built keep their fingerprint; None for any other."""
    entities = spec_fields["entities"]
    if len(entities) > 1 or any(set(s) != {"mean"} for e in entities.values() for s in e["aggregates"].values()):
        return None
    (entity, history), = entities.items() or [(None, {"windows": ["1h", "1d", "7d"], "aggregates": {}})]
    return {**{k: v for k, v in spec_fields.items() if k != "entities"},
            "entity": entity, "windows": history["windows"], "window_means": list(history["aggregates"])}
