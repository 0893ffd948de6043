# The README's two commands: `make demo` (the pipeline end to end on the embedded
# default: local Spark + a local Delta lakehouse) and `make test`. Each creates .venv,
# installs the package with its extras and fetches the Delta jars from Maven Central.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[torch,test]"
	@echo "fetching the Delta jars (Maven Central, cached by Spark's Ivy in ~/.ivy2.5.2)"
	$(PY) -m sparkml_ext.session
	touch $(STAMP)

demo: venv
	PYSPARK_PYTHON=$(abspath $(PY)) $(VENV)/bin/sparkml-ext pipeline --pipeline conf/pipelines/clicks.yaml

test: venv
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest

clean:
	rm -rf $(VENV) lakehouse data/generated spark-warehouse
