"""A lakehouse seeded with generated events: generate → ingest every batch → features.

The start of `sparkml-ext pipeline`, as one call for the test fixtures and the benchmarks
that need a lakehouse to work on. Like the CLI it sits above the jobs and runs them in
order; the jobs themselves still meet only in the lakehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pyspark.sql import SparkSession

from sparkml_ext.config import GenerateConfig, PipelineConfig
from sparkml_ext.features import build_features
from sparkml_ext.generate import generate_clicks
from sparkml_ext.ingest import ingest_batch

STEPS = ("generate", "ingest", "features")
Step = Callable[[str, Callable[[], Any]], Any]  # (step name, run) -> run()


def _run(name: str, run: Callable[[], Any]) -> Any:
    return run()


def seed_lakehouse(
    spark: SparkSession,
    cfg: PipelineConfig,
    gen: GenerateConfig | None = None,
    *,
    through: Literal["ingest", "features"] = "features",
    step: Step = _run,
) -> dict:
    """Generate `gen` (by default the pipeline's `generate` section), ingest every batch it
    lands, then build the feature table, unless `through="ingest"` stops before it.

    The events land under `source.path`, where ingest reads them (`gen.landing` is where
    `sparkml-ext generate` lands them and plays no part here), so `gen.format` must be
    `source.format`. Each of `STEPS` runs as `step(name, run)`, which returns `run()`: a
    benchmark passes its clock there. Returns each step's report by name: the generate
    report, the list of ingest reports in batch order and the features report.
    """
    if through not in ("ingest", "features"):
        raise ValueError(f"through: must be 'ingest' or 'features', got {through!r}")
    gen = cfg.generate if gen is None else gen
    if gen.format != cfg.source.format:
        raise ValueError(f"generate.format {gen.format!r} is not source.format {cfg.source.format!r}: "
                         "ingest could not read what generate lands")
    landing = cfg.source.path
    reports: dict = {"generate": step("generate", lambda: generate_clicks(
        spark, gen, landing, cfg.table_path("truth")))}
    batches = [folder.rstrip("/").rpartition("/")[2] for folder in reports["generate"]["batch_dirs"]]
    reports["ingest"] = step("ingest", lambda: [ingest_batch(spark, cfg, batch) for batch in batches])
    if through == "features":
        reports["features"] = step("features", lambda: build_features(spark, cfg))
    return reports
