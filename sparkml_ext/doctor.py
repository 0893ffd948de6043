"""`sparkml-ext doctor`: what the jobs need, checked in a second or two, before any job runs.

Each check is a small function returning a `Check`: its status, what it found and, when
something is wrong, what to do. None of them starts Spark or a JVM session: Java is asked
for its version, the Delta jars are looked for where Spark's Ivy caches them, the lakehouse
gets a real temporary file. A `problem` breaks the jobs (exit 1); a `warning` is worth
fixing but nothing required fails; a `note` says what was not checked, or needs no action.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from sparkml_ext.config import ConfigError, load_config

Status = Literal["ok", "warning", "problem", "note"]

DIST = "sparkml-ext"
INSTALL_SPARK = "pip install 'sparkml-ext[spark]' (in a checkout: make venv)"
LAKEHOUSE_ENV = "SPARKML_EXT_LAKEHOUSE"

# Spark 4 runs on Java 17 and 21 (and later LTS releases); 18-20 are untested stopgaps.
JAVA_LTS = 17
JAVA_NEXT_LTS = 21
INSTALL_JAVA = ("install a JDK 17 or 21 (Debian: apt-get install openjdk-17-jre-headless) and put "
                "its bin/ on PATH or set JAVA_HOME to it")

# Where Spark 4's `spark.jars.packages` resolution keeps jars (MavenUtils: `spark.jars.ivy`,
# else ~/.ivy2.5.2; it also reads the local Maven repository), and where it downloads them.
IVY_DEFAULT = Path.home() / ".ivy2.5.2"
M2_REPOSITORY = Path.home() / ".m2" / "repository"
CENTRAL = "https://repo1.maven.org/maven2/"
REPOSITORY_ENV = "DEFAULT_ARTIFACT_REPOSITORY"  # Spark's override of Maven Central
HEAD_TIMEOUT_S = 3


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    found: str
    fix: str = ""


@dataclass(frozen=True)
class Extra:
    """An optional dependency: its module (also its distribution), the setup.cfg extra that
    installs it (None: no job uses it yet) and what needs it."""

    module: str
    extra: str | None
    needed_by: str

    @property
    def install(self) -> str:
        return f"pip install 'sparkml-ext[{self.extra}]'" if self.extra else f"pip install {self.module}"


EXTRAS = (
    Extra("torch", "torch", "train-torch and scoring a torch model"),
    Extra("mlflow", "mlflow", "the tracking: section (MLflow runs, the model registry)"),
    Extra("xgboost", "xgboost", "train-mllib's xgboost and xgboost_regression models"),
    Extra("boto3", "s3", "a lakehouse on S3 (the model store publishes with a conditional put)"),
    Extra("fastapi", "serve", "serve (online scoring over HTTP)"),
)


def run_checks(pipeline: str | None = None) -> list[Check]:
    """Every check, in the order a user fixes them. The lakehouse is the pipeline file's
    when one is given, else $SPARKML_EXT_LAKEHOUSE's."""
    checks = [check_python(), check_java(), check_installed("pyspark"), check_installed("delta-spark"),
              check_delta_pair()]
    spark_conf: dict[str, str] = {}
    lakehouse, origin = os.environ.get(LAKEHOUSE_ENV), f"${LAKEHOUSE_ENV}"
    if pipeline is not None:
        try:
            cfg = load_config(pipeline)
        except ConfigError as err:
            checks.append(Check("pipeline", "problem", str(err), "fix the key the message names"))
        else:
            checks.append(Check("pipeline", "ok", f"{pipeline} loads"))
            spark_conf, lakehouse, origin = cfg.spark, cfg.lakehouse_root, f"lakehouse: in {pipeline}"
    checks.append(check_delta_jars(spark_conf.get("spark.jars.ivy")))
    checks.append(check_lakehouse(lakehouse, origin))
    checks.append(check_s3_log_store())
    checks.extend(check_extra(extra) for extra in EXTRAS)
    return checks


def check_python() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    wanted = _metadata("Requires-Python")
    if wanted is None:
        return Check("python", "note", f"{found}; sparkml-ext is not installed, so its Python "
                     "range is unknown", "pip install -e . (or make venv) in the checkout")
    if _meets(found, wanted):
        return Check("python", "ok", f"{found} ({sys.executable})")
    return Check("python", "problem", f"{found} ({sys.executable}); sparkml-ext needs {wanted}",
                 "create the environment with that Python: make venv PYTHON=python3.11")


def check_java() -> Check:
    """The java Spark will start: $JAVA_HOME/bin/java when JAVA_HOME is set (spark-class
    ignores PATH then), else the first java on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = os.path.join(home, "bin", "java")
        if not os.access(java, os.X_OK):
            return Check("java", "problem", f"JAVA_HOME={home} has no bin/java, which Spark runs",
                         "point JAVA_HOME at a JDK 17 or 21, or unset it to use java on PATH; "
                         f"or {INSTALL_JAVA}")
    else:
        java = shutil.which("java")
        if java is None:
            return Check("java", "problem", "no java on PATH and JAVA_HOME is not set", INSTALL_JAVA)
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=15,
                               check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("java", "problem", f"{java} -version failed: {err}", INSTALL_JAVA)
    match = re.search(r'version "([^"]*)"', shown.stderr + shown.stdout)
    numbers = re.findall(r"\d+", match[1]) if match else []
    if not numbers:
        return Check("java", "problem", f"{java} -version printed no version", INSTALL_JAVA)
    version = match[1]
    legacy = numbers[0] == "1" and len(numbers) > 1  # "1.8.0_292" is Java 8
    major = int(numbers[1] if legacy else numbers[0])
    found = f"Java {major} ({version}, {java})"
    if major < JAVA_LTS:
        return Check("java", "problem", f"{found}; Spark 4 needs Java 17 or 21", INSTALL_JAVA)
    if JAVA_LTS < major < JAVA_NEXT_LTS:
        return Check("java", "warning", f"{found}; Spark 4 is built and tested on Java 17 and 21",
                     INSTALL_JAVA)
    return Check("java", "ok", found)


def check_installed(dist: str) -> Check:
    """A required distribution against sparkml-ext's own pin (setup.cfg's spark extra)."""
    try:
        found = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return Check(dist, "problem", "not installed", INSTALL_SPARK)
    pin = _pins().get(dist)
    if pin is None or _meets(found, pin):
        return Check(dist, "ok", found + (f" (pinned {pin})" if pin else ""))
    return Check(dist, "warning", f"{found}, but sparkml-ext pins {pin}", INSTALL_SPARK)


def check_delta_pair() -> Check:
    """The Delta jar session.DELTA_PACKAGE names is built for one Spark line (its `_4.2`
    suffix) and one Delta release: pyspark and delta-spark must be of those lines."""
    try:
        from sparkml_ext.session import DELTA_PACKAGE
    except ImportError as err:  # session imports pyspark
        return Check("delta jar", "problem", f"cannot read the jar's version: {err}", INSTALL_SPARK)
    _, artifact, jar_version = DELTA_PACKAGE.split(":")
    spark_line = artifact.split("_")[1]
    versions = {}
    for dist in ("pyspark", "delta-spark"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return Check("delta jar", "problem", f"{DELTA_PACKAGE}: {dist} is not installed", INSTALL_SPARK)
    wanted = {"pyspark": spark_line, "delta-spark": _line(jar_version)}
    misfits = [f"{dist} {versions[dist]} is not {line}.x" for dist, line in wanted.items()
               if _line(versions[dist]) != line]
    if misfits:
        return Check("delta jar", "problem", f"{DELTA_PACKAGE} (Spark {spark_line}, Delta "
                     f"{jar_version}): {'; '.join(misfits)}", INSTALL_SPARK)
    return Check("delta jar", "ok", f"{DELTA_PACKAGE} fits pyspark {versions['pyspark']} and "
                 f"delta-spark {versions['delta-spark']}")


def check_delta_jars(ivy_dir: str | None = None) -> Check:
    """The jar cached where Spark's Ivy looks (no network), else Maven Central reachable."""
    try:
        from sparkml_ext.session import DELTA_PACKAGE
    except ImportError as err:
        return Check("delta jars", "problem", f"cannot read the jar's version: {err}", INSTALL_SPARK)
    group, artifact, version = DELTA_PACKAGE.split(":")
    ivy = Path(ivy_dir) if ivy_dir else IVY_DEFAULT
    places = [ivy / "jars" / f"{group}_{artifact}-{version}.jar",
              M2_REPOSITORY.joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.jar")]
    cached = next((place for place in places if place.is_file()), None)
    if cached is not None:
        return Check("delta jars", "ok", f"cached: {cached}")
    repository = os.environ.get(REPOSITORY_ENV, CENTRAL)
    folder = f"{repository.rstrip('/')}/{group.replace('.', '/')}/{artifact}/{version}"
    head = urllib.request.Request(f"{folder}/{artifact}-{version}.pom", method="HEAD")
    try:
        urllib.request.urlopen(head, timeout=HEAD_TIMEOUT_S).close()
    except (urllib.error.URLError, OSError) as err:  # HTTPError (a 404) is a URLError too
        return Check("delta jars", "problem", f"not in {ivy / 'jars'} or {M2_REPOSITORY}, and "
                     f"{repository} cannot serve them ({getattr(err, 'reason', err)})",
                     "connect and run `python -m sparkml_ext.session` once (it caches them); offline, "
                     f"copy {ivy} from a machine that has run it, or set {REPOSITORY_ENV} to a Maven "
                     "mirror you can reach")
    return Check("delta jars", "warning", f"not cached yet; {repository} is reachable, so the "
                 "first Spark session downloads them",
                 "run `python -m sparkml_ext.session` now, so no job waits for it")


def check_lakehouse(where: str | None, origin: str) -> Check:
    """A local lakehouse must exist or be creatable, and take a file: tried for real, with a
    temporary file in the lakehouse or its nearest existing parent (permissions alone do not
    tell, for root or on a read-only mount). A URI needs Spark's Hadoop file systems."""
    if where is None:
        return Check("lakehouse", "note", f"not checked: give --pipeline FILE or set {LAKEHOUSE_ENV}")
    if "://" in where and not where.startswith("file://"):
        return Check("lakehouse", "note", f"{where}: not checked here (it needs Spark's Hadoop file "
                     "system and its credentials); the first job's write checks it")
    path = Path(where.removeprefix("file://")).absolute()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sparkml-ext-doctor-"):
            pass
    except OSError as err:
        return Check("lakehouse", "problem", f"{path}: cannot write in {existing}: {err.strerror}",
                     f"make {existing} a folder this user can write, or move the lakehouse ({origin})")
    state = "exists" if existing == path else f"will be created in {existing}"
    return Check("lakehouse", "ok", f"{path} ({state}, writable; from {origin})")


def check_s3_log_store() -> Check:
    """The package's Delta log store for S3 (several applications per table), and the
    spark-submit options that load it (a session the package starts adds them itself)."""
    try:
        from sparkml_ext.object_store import LOG_STORE_CLASS, LOG_STORE_JAR
    except ImportError as err:
        return Check("s3 log store", "problem", f"cannot read its location: {err}", INSTALL_SPARK)
    if not os.path.exists(LOG_STORE_JAR):
        return Check("s3 log store", "warning", f"{LOG_STORE_JAR} is missing: Delta commits on S3 are "
                     "safe for one writing application per table only",
                     "build it with a JDK: python scripts/build_jar.py (in a checkout: make venv)")
    return Check("s3 log store", "ok", f"{LOG_STORE_JAR}; under spark-submit add --jars {LOG_STORE_JAR} "
                 f"--conf spark.delta.logStore.s3a.impl={LOG_STORE_CLASS}")


def check_extra(extra: Extra) -> Check:
    """An optional dependency: importable (find_spec, no import) and meeting its pin."""
    if importlib.util.find_spec(extra.module) is None:
        status: Status = "warning" if extra.extra else "note"
        return Check(extra.module, status, f"not installed; needed by {extra.needed_by}", extra.install)
    try:
        found = importlib.metadata.version(extra.module)
    except importlib.metadata.PackageNotFoundError:
        return Check(extra.module, "ok", "importable (no package metadata, version unknown)")
    pin = _pins().get(extra.module)
    if pin is None or _meets(found, pin):
        return Check(extra.module, "ok", found)
    return Check(extra.module, "warning", f"{found}, but sparkml-ext pins {pin}", extra.install)


def failed(checks: list[Check]) -> bool:
    return any(check.status == "problem" for check in checks)


def render(checks: list[Check], tty: bool) -> str:
    """One line per check (and its fix indented below); marks on a terminal, words elsewhere."""
    marks = {"ok": "✓", "warning": "!", "problem": "✗", "note": "-"} if tty else \
        {"ok": "OK  ", "warning": "WARN", "problem": "FAIL", "note": "NOTE"}
    lines = []
    for check in checks:
        lines.append(f"{marks[check.status]} {check.name}: {check.found}")
        if check.fix:
            lines.append(f"    fix: {check.fix}")
    problems = sum(check.status == "problem" for check in checks)
    warnings = sum(check.status == "warning" for check in checks)
    lines.append(f"doctor: {problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict:
    return {"ok": not failed(checks), "checks": [asdict(check) for check in checks]}


def _metadata(field: str) -> str | None:
    try:
        return importlib.metadata.metadata(DIST).get(field)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pins() -> dict[str, str]:
    """sparkml-ext's requirements by distribution: {'pyspark': '==4.2.0', ...} (extras too)."""
    try:
        requirements = importlib.metadata.requires(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    pins = {}
    for requirement in requirements:
        name, spec = re.match(r"\s*([A-Za-z0-9_.-]+)\s*([^;]*)", requirement).groups()
        pins[name.lower().replace("_", "-")] = spec.strip()
    return pins


_COMPARE = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
            ">": operator.gt, "<": operator.lt}


def _meets(version: str, spec: str) -> bool:
    """Whether `version` satisfies a plain specifier such as '>=3.11,<3.12' (the forms
    setup.cfg uses; local and pre-release tags are ignored)."""
    for clause in filter(None, (part.strip() for part in spec.split(","))):
        op, wanted = re.match(r"(==|!=|>=|<=|>|<)\s*(.+)", clause).groups()
        have, want = _release(version), _release(wanted)
        width = max(len(have), len(want))
        if not _COMPARE[op](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", version).group(0).split("."))


def _line(version: str) -> str:
    """'4.2.0' -> '4.2': the release line a jar is built for."""
    return ".".join(version.split(".")[:2])
