"""Import boundaries: the torch side never pulls in pyspark, the manifest never torch."""

import pkgutil
import subprocess
import sys

import sparkml_ext.deep

CHECK = """
import importlib, sys
forbidden, names = sys.argv[1], sys.argv[2:]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] == forbidden)
assert not leaked, f"importing {names} imported {leaked}"
"""


def imports_without(forbidden: str, modules: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHECK, forbidden, *modules],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_module_of_deep_imports_pyspark():
    prefix = "sparkml_ext.deep."
    modules = [m.name for m in pkgutil.iter_modules(sparkml_ext.deep.__path__, prefix)]
    assert {prefix + "dataset", prefix + "train", prefix + "model"} <= set(modules)
    done = imports_without("pyspark", modules)
    assert done.returncode == 0, done.stderr


def test_the_manifest_contract_needs_no_torch():
    """The Spark side imports it on machines that may have no torch."""
    done = imports_without("torch", ["sparkml_ext.deep.manifest"])
    assert done.returncode == 0, done.stderr


def test_the_pipeline_config_and_the_ranks_knobs_need_no_torch():
    """The pipeline config extends the ranks' knobs; loading a pipeline file needs no torch."""
    done = imports_without("torch", ["sparkml_ext.deep.config", "sparkml_ext.config"])
    assert done.returncode == 0, done.stderr
