# Two commands for a newcomer: `make demo` (set-up + the main job) and `make test`.
# Each creates .venv when it is missing. torch is installed first, on its own, so a CPU
# machine gets the CPU wheel and never pulls the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefscale-installed
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

MLFLOW_UI_VENV ?= .venv-mlflow-ui
PAIRJUDGE_VENV ?= .venv-pairjudge
RUN ?= runs/local

.PHONY: setup demo test bench bench-pairjudge-venv clean mlflow-ui docs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/prefscale run --config configs/local.yaml

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_pairs.py

# The user guide's generated pages and pictures (tests/test_docs.py fails when they are stale), then the site.
docs: setup
	$(VENV)/bin/prefscale config reference > docs/CONFIG.md
	$(VENV)/bin/prefscale config cli-reference > docs/cli.md
	$(PY) benchmarks/render_page.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The peer library bench_score_throughput.py compares against, kept out of prefscale's environment.
bench-pairjudge-venv:
	test -x $(PAIRJUDGE_VENV)/bin/python || python3 -m venv $(PAIRJUDGE_VENV)
	$(PAIRJUDGE_VENV)/bin/pip install -q "$(TORCH)"
	$(PAIRJUDGE_VENV)/bin/pip install -q "pairjudge[judge]==0.3.0" "transformers==5.23.0" pyarrow

# Browse a run's tracked commands at http://127.0.0.1:5000 (local only). MLflow's server pins
# pyarrow<26, below prefscale's, so it gets its own environment.
mlflow-ui:
	test -x $(MLFLOW_UI_VENV)/bin/mlflow || (python3 -m venv $(MLFLOW_UI_VENV) && $(MLFLOW_UI_VENV)/bin/pip install -q "mlflow==3.17.2")
	$(MLFLOW_UI_VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUN))/mlflow/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf runs .pytest_cache .hypothesis
