# The README's two commands: `make demo` (the pipeline end to end on the embedded
# default: local Spark + a local Delta lakehouse) and `make test`. Each creates .venv,
# installs the package with its extras, fetches the Delta jars from Maven Central and
# compiles the package's Delta log store for S3 (needs a JDK's javac).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# uv installs the same pinned requirements as pip, several times faster (torch's CUDA wheels
# are most of the 6 GiB): about 1 minute instead of 4.5 on this machine.
UV     := $(VENV)/bin/uv
# Both environments are byte-compiled at install, as pip does and uv does not by default: a
# process that may not write __pycache__ (PYTHONDONTWRITEBYTECODE, a read-only install) would
# compile every module it imports, each time (torch 5.1 s -> 2.1 s, mlflow 5.0 -> 2.0,
# pyspark.ml 2.3 -> 0.8, Airflow 5.3 -> 1.9 on this machine; every job, Python worker, DDP
# rank and Airflow task starts one).
UV_INSTALL := $(UV) pip install --compile-bytecode --quiet

.PHONY: venv demo test clean chromium airflow-venv dist cluster-start cluster-stop cluster-demo s3-server

# The package's one JVM class (jvm/src: the Delta log store for S3), compiled into the package.
JAR    := sparkml_ext/jars/sparkml-ext-delta.jar

venv: $(STAMP) $(JAR)

$(JAR): $(wildcard jvm/src/*/*/*/*.java) scripts/build_jar.py | $(STAMP)
	$(PY) scripts/build_jar.py

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(UV_INSTALL) --python $(PY) -e ".[spark,torch,test,report,mlflow,xgboost,s3,serve]"
	@echo "fetching the Delta jars (Maven Central, cached by Spark's Ivy in ~/.ivy2.5.2)"
	$(PY) -m sparkml_ext.session
	touch $(STAMP)

# Airflow in a virtual environment of its own, apart from .venv (tests/test_airflow_dag.py
# needs it): pinned versions plus constraints made from a working install (airflow/constraints.txt).
AIRFLOW_VENV := .airflow-venv

airflow-venv: $(AIRFLOW_VENV)/.installed

$(AIRFLOW_VENV)/.installed: airflow/requirements.txt airflow/constraints.txt | $(STAMP)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(UV_INSTALL) --python $(AIRFLOW_VENV)/bin/python -r airflow/requirements.txt -c airflow/constraints.txt
	touch $@

demo: venv
	PYSPARK_PYTHON=$(abspath $(PY)) $(VENV)/bin/sparkml-ext pipeline --pipeline conf/pipelines/clicks.yaml

test: venv chromium airflow-venv
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

# The package as a cluster ships it: a wheel (Databricks, pip on the nodes) and the same
# bytes as dist/sparkml_ext.zip for spark-submit --py-files (Spark imports .zip, not .whl).
dist: venv
	rm -rf dist build/lib
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	cp dist/sparkml_ext-*.whl dist/sparkml_ext.zip

# A standalone master and two workers on 127.0.0.1 (scripts/cluster.py; UI on :8090).
cluster-start: venv
	$(PY) scripts/cluster.py start

cluster-stop:
	$(PY) scripts/cluster.py stop

# The whole pipeline as one spark-submit to the running cluster, DDP ranks on both workers.
cluster-demo: dist
	$(PY) scripts/cluster.py submit jobs/pipeline.py --pipeline conf/pipelines/clicks.yaml \
	    --set train_torch.local_mode=false

# A real S3 server (moto's) on 127.0.0.1:9000 with a bucket `lake`, in the foreground: it
# prints the environment that points the jobs at it (README, "On object storage").
s3-server: venv
	$(PY) scripts/s3_server.py --port 9000 --bucket lake

# The report test loads the page in headless Chromium (Debian's package; needs root or sudo).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) lakehouse data/generated spark-warehouse
