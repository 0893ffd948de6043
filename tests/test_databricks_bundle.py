"""databricks.yml, checked offline (no Databricks workspace is reachable from here).

The wheel installs into a fresh venv that has the project's dependencies but not the
project (as a Databricks runtime has pyspark and torch), and every entry point the
bundle names runs from it; every task's parameters parse with the real CLI parser and
its `--set` overrides load with the real config loader, in pipeline order.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from shipping import REPO, build_wheel, cluster_script

from sparkml_ext.cli import build_parser
from sparkml_ext.config import load_config

BUNDLE = yaml.safe_load((REPO / "databricks.yml").read_text())
JOB = BUNDLE["resources"]["jobs"]["clicks_pipeline"]
TASKS = {task["task_key"]: task for task in JOB["tasks"]}
STAGES = ["generate", "ingest", "features", "train-mllib", "train-torch"]  # `pipeline`'s order
# What `databricks bundle deploy` fills in: the synced repo, and values for required variables.
DEPLOYED = {"workspace.file_path": str(REPO), "bundle.target": "dev",
            "var.lakehouse": "s3://bucket/sparkml_ext", "var.checkpoint_root": "/Volumes/m/s/v/ckpt"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def deployed(text: str) -> str:
    """`${...}` bundle references as deploy renders them (variables' defaults included)."""
    values = {**DEPLOYED, **{f"var.{k}": str(v["default"]) for k, v in BUNDLE["variables"].items()
                             if "default" in v}}
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text)


def run_time(argument: str) -> str:
    """`{{job.parameters.x}}` as a run with default parameters sees it."""
    defaults = {p["name"]: deployed(p["default"]) for p in JOB["parameters"]}
    return re.sub(r"\{\{job\.parameters\.([\w-]+)\}\}", lambda m: defaults[m.group(1)], argument)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A throwaway venv with only the wheel installed (dependencies: .venv's site-packages)."""
    python = cluster_script().node_python(tmp_path_factory.mktemp("venv"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--ignore-installed", str(wheel)], check=True)
    return python.parent.parent


def test_the_bundle_references_only_what_it_declares():
    text = (REPO / "databricks.yml").read_text()
    assert deployed(text)  # every ${...} is a declared variable or a deploy-time value
    declared = {p["name"] for p in JOB["parameters"]}
    used = set(re.findall(r"\{\{job\.parameters\.([\w-]+)\}\}", text))
    assert used <= declared, f"undeclared job parameters {used - declared}"
    assert declared <= used, f"job parameters no task uses: {declared - used}"
    clusters = {c["job_cluster_key"] for c in JOB["job_clusters"]}
    for key, task in TASKS.items():
        assert task["job_cluster_key"] in clusters, key
        assert {d["task_key"] for d in task.get("depends_on", [])} <= TASKS.keys(), key
        assert task["libraries"] == [{"whl": "./dist/*.whl"}], key  # what the artifact builds
    assert "-ml-" in JOB["job_clusters"][0]["new_cluster"]["spark_version"]  # an ML runtime


def test_each_entry_point_is_in_the_wheel_and_runs_from_a_fresh_venv(wheel, venv):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(name).decode())
    dist = name.split("-")[0]
    scripts = entry_points["console_scripts"]
    for key, task in TASKS.items():
        wheel_task = task["python_wheel_task"]
        assert normalized(wheel_task["package_name"]) == normalized(dist), key
        assert wheel_task["entry_point"] in scripts, f"{key}: {wheel_task['entry_point']}?"

    installed = subprocess.run([venv / "bin" / "python", "-P", "-c",
                                "import sparkml_ext; print(sparkml_ext.__file__)"],
                               cwd=venv, check=True, capture_output=True, text=True).stdout
    assert installed.startswith(str(venv)), installed  # the wheel's copy, not the editable one
    for task in TASKS.values():
        script = venv / "bin" / task["python_wheel_task"]["entry_point"]
        job = task["python_wheel_task"]["parameters"][0]
        shown = subprocess.run([script, job, "--help"], cwd=venv, capture_output=True, text=True)
        assert shown.returncode == 0 and "--pipeline" in shown.stdout, shown.stderr


def test_the_wheel_leaves_the_runtimes_spark_and_torch_alone(wheel):
    """Installing the wheel on a runtime must not pull PyPI's pyspark, Delta or torch over its own."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.removeprefix("Requires-Dist: ") for line in archive.read(name).decode().splitlines()
                    if line.startswith("Requires-Dist: ")]
    always = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert always == {"pyarrow", "pandas", "numpy", "pyyaml"}
    spark_extra = {r.split(";")[0].replace(" ", "") for r in requires if "extra == \"spark\"" in r}
    assert spark_extra == {"pyspark==4.2.0", "delta-spark==4.4.1"}


def test_task_parameters_are_real_cli_options_and_config_keys():
    parser = build_parser()
    for key, task in TASKS.items():
        argv = [run_time(deployed(a)) for a in task["python_wheel_task"]["parameters"]]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"task {key}: the CLI refuses {argv}")
        assert Path(args.pipeline) == REPO / "conf/pipelines/clicks.yaml", key
        load_config(args.pipeline, args.overrides)  # raises ConfigError naming a bad --set key


def test_tasks_run_in_pipeline_order():
    def ancestors(key: str) -> set[str]:
        parents = {d["task_key"] for d in TASKS[key].get("depends_on", [])}
        return parents.union(*(ancestors(p) for p in parents))

    job_of = {key: task["python_wheel_task"]["parameters"][0] for key, task in TASKS.items()}
    assert set(STAGES) <= set(job_of.values())
    for key, job in job_of.items():
        before = {job_of[a] for a in ancestors(key)}
        earlier = STAGES[:STAGES.index(job)] if job in STAGES else STAGES[:3]
        assert set(earlier) <= before, f"{key} ({job}) can start before {set(earlier) - before}"
    for key, job in job_of.items():  # each score task waits for the model it scores
        if job == "score":
            model = TASKS[key]["python_wheel_task"]["parameters"]
            trainer = "train-torch" if "torch/latest" in model else "train-mllib"
            assert trainer in {job_of[a] for a in ancestors(key)}, key
