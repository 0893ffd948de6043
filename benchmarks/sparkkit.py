"""The pieces several benchmarks share: a scratch run with its own session, the plain CSV →
Delta write that `ingest.py` and `engine.py` set ingest beside, and clearing an earlier build."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparkml_ext.config import PipelineConfig
from sparkml_ext.session import get_spark


@contextmanager
def scratch_run(app_name: str, work: Path) -> Iterator[tuple[object, Path]]:
    """(a SparkSession without its UI, a fresh folder under `work`); both gone afterwards,
    also when the run fails or `timeout` stops it."""
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    spark = get_spark(app_name, {"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark, folder
    finally:
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)


def plain_write(spark, cfg: PipelineConfig, batch: str, target: str) -> float:
    """Seconds to read one landing batch with the declared schema and the reader's options
    and append it to a Delta table: ingest's reference (no checks, quarantine or ledger)."""
    source = cfg.source
    ddl = ", ".join(f"`{c}` {t}" for c, t in source.schema.items())
    started = time.perf_counter()
    (spark.read.schema(ddl).options(**source.options).csv(f"{source.path}/{batch}")
     .write.format("delta").mode("append").save(target))
    return time.perf_counter() - started


def remove(*paths: Path) -> None:
    """Delete each path that exists, a folder or a file: an earlier run's build."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
