"""`sparkml-ext doctor` through the real CLI in a subprocess: no Spark, about a second a run."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sparkml_ext.doctor import EXTRAS

REPO = Path(__file__).resolve().parents[1]


def doctor(*argv: str, env: dict[str, str], python: str = sys.executable) -> subprocess.CompletedProcess:
    """`python -m sparkml_ext.cli doctor <argv>` from the checkout, output captured (not a TTY)."""
    return subprocess.run([python, "-m", "sparkml_ext.cli", "doctor", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def by_name(result: subprocess.CompletedProcess) -> dict[str, dict]:
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


@pytest.fixture
def env() -> dict[str, str]:
    """This process's environment without a lakehouse of its own."""
    return {k: v for k, v in os.environ.items() if k != "SPARKML_EXT_LAKEHOUSE"}


def test_healthy_machine_passes_and_leaves_nothing_behind(env, tmp_path):
    lake = tmp_path / "lake"
    result = doctor("--json", env={**env, "SPARKML_EXT_LAKEHOUSE": str(lake)})
    assert result.returncode == 0, result.stdout + result.stderr
    checks = by_name(result)
    assert checks["java"]["status"] == "ok" and "Java 17" in checks["java"]["found"]
    for dist in ("pyspark", "delta-spark"):
        assert checks[dist]["status"] == "ok"
        assert checks[dist]["found"].startswith(importlib.metadata.version(dist))
    assert checks["delta jar"]["status"] == "ok"
    assert checks["lakehouse"]["status"] == "ok"
    assert str(lake) in checks["lakehouse"]["found"]
    assert "$SPARKML_EXT_LAKEHOUSE" in checks["lakehouse"]["found"]
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, and no lakehouse was made
    assert checks["s3 log store"]["status"] == "ok"  # with the options spark-submit needs for it
    assert "--conf spark.delta.logStore.s3a.impl=io.sparkmlext." in checks["s3 log store"]["found"]


def test_a_missing_s3_log_store_is_a_warning_with_its_build_command(monkeypatch, tmp_path):
    from sparkml_ext import doctor, object_store

    monkeypatch.setattr(object_store, "LOG_STORE_JAR", str(tmp_path / "absent.jar"))
    check = doctor.check_s3_log_store()
    assert check.status == "warning"
    assert check.fix == "build it with a JDK: python scripts/build_jar.py (in a checkout: make venv)"
    assert "one writing application per table" in check.found


@pytest.mark.parametrize("java_home", [None, "nowhere"])
def test_missing_java_is_a_problem_with_its_fix(env, tmp_path, java_home):
    """No java on PATH (an empty folder) and no JAVA_HOME; or a JAVA_HOME without bin/java,
    which Spark would run even with a java on PATH."""
    env = {k: v for k, v in env.items() if k != "JAVA_HOME"}
    if java_home is None:
        env["PATH"] = str(tmp_path)
    else:
        env["JAVA_HOME"] = str(tmp_path / java_home)
    result = doctor(env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL java:"))
    assert lines[at + 1].startswith("    fix: ") and "JDK 17 or 21" in lines[at + 1]
    assert ("no java on PATH" if java_home is None else "has no bin/java") in result.stdout
    assert "NOTE lakehouse: not checked" in result.stdout  # no pipeline file, no lakehouse variable
    assert re.search(r"^OK +pyspark:", result.stdout, re.MULTILINE)  # the other checks still ran


@pytest.mark.parametrize("below", ["a-file/lake", "a-file"])
def test_unwritable_lakehouse_is_a_problem_with_its_fix(env, tmp_path, below):
    """A lakehouse under (or at) a regular file: no user, root included, can write there."""
    (tmp_path / "a-file").write_text("not a folder")
    lake = tmp_path / below
    result = doctor("--pipeline", "conf/pipelines/clicks.yaml", "--json",
                    env={**env, "SPARKML_EXT_LAKEHOUSE": str(lake)})
    assert result.returncode == 1, result.stdout + result.stderr
    lakehouse = by_name(result)["lakehouse"]
    assert lakehouse["status"] == "problem"
    assert str(lake) in lakehouse["found"] and "Not a directory" in lakehouse["found"]
    assert "lakehouse: in conf/pipelines/clicks.yaml" in lakehouse["fix"]
    assert by_name(result)["pipeline"]["status"] == "ok"


def test_uncached_delta_jars_offline_are_a_problem_with_its_fix(env, tmp_path):
    """An empty home (no Ivy or Maven cache) and Spark's repository override pointing at a
    closed local port: offline, without touching the network."""
    offline = {"HOME": str(tmp_path), "DEFAULT_ARTIFACT_REPOSITORY": "http://127.0.0.1:1/"}
    result = doctor("--json", env={**env, **offline})
    assert result.returncode == 1, result.stdout + result.stderr
    jars = by_name(result)["delta jars"]
    assert jars["status"] == "problem" and "cannot serve them" in jars["found"]
    assert "python -m sparkml_ext.session" in jars["fix"] and "DEFAULT_ARTIFACT_REPOSITORY" in jars["fix"]


def test_missing_extras_are_warnings_with_their_pip_command(env, tmp_path):
    """A real environment without the extras: a fresh venv whose site-packages links every
    entry of this one except the extras' own packages and metadata. doctor's find_spec then
    finds nothing, as on a machine where they were never installed (a shadowing module would
    still be found by find_spec, and `-S` would hide pyspark and yaml too)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = tmp_path / "venv" / "lib" / ours.parent.name / "site-packages"
    hidden = {extra.module for extra in EXTRAS}
    for entry in ours.iterdir():
        if re.split(r"[-.]", entry.name)[0].lower() not in hidden:
            (theirs / entry.name).symlink_to(entry)
    result = doctor("--json", env=env, python=str(tmp_path / "venv" / "bin" / "python"))
    assert result.returncode == 0, result.stdout + result.stderr  # extras only warn
    checks = by_name(result)
    assert checks["pyspark"]["status"] == "ok"  # the same environment, less the extras
    for extra in EXTRAS:
        check = checks[extra.module]
        assert check["status"] == ("warning" if extra.extra else "note"), check
        assert check["found"].startswith("not installed") and check["fix"] == extra.install
    assert checks["torch"]["fix"] == "pip install 'sparkml-ext[torch]'"


def test_each_extra_names_an_extra_of_the_package():
    provided = importlib.metadata.metadata("sparkml-ext").get_all("Provides-Extra")
    assert {extra.extra for extra in EXTRAS if extra.extra} <= set(provided)
