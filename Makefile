# Two commands do all the set-up on a fresh machine: `make benchmark` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the builds available offline on our machines.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: benchmark readme-tables test cluster-test cluster-test-s3 venv ui clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

benchmark: $(VENV)/.installed
	$(BIN)/python experiments/full_benchmark.py $(ARGS)

# The smoke benchmark, then its printed tables into README.md (between the smoke-tables markers).
readme-tables: $(VENV)/.installed
	mkdir -p runs
	$(BIN)/python experiments/full_benchmark.py $(ARGS) | tee runs/smoke_benchmark.txt
	$(BIN)/python experiments/update_readme.py runs/smoke_benchmark.txt

# Three pytest processes at once, each with its own Ray session (much of the suite waits on
# Ray start-up, subprocess drivers, a browser; on 2 cores the three end within a minute or
# two of each other): the training tests (tests/test_train_*) followed by two shorter Tune
# tests (AFTER_TRAIN_TESTS), the end-to-end tests that drive whole benchmarks, the alpha
# search and the MLflow UI in Chromium (E2E_TESTS), and the rest. Their outputs are printed
# one after the other. The training tests come first in a session of their own: in one long
# session the driver's connection to Ray's GCS stopped answering three times, each time at
# the start of tests/test_train_e2e.py after ~8 minutes of other Ray tests (a key-value put
# inside Ray Data that never returns; docs/RAY.md, "Known Ray hang").
# PYTEST_ARGS=...: one pytest run with those arguments.
AFTER_TRAIN_TESTS := tests/test_orchestration_alpha.py tests/test_storage_s3_train.py
E2E_TESTS := tests/test_orchestration_signals.py tests/test_mlflow_ui.py \
  tests/test_mlflow_ui_cross_spectral.py tests/test_orchestration_benchmark.py \
  tests/test_alpha_e2e.py
test: $(VENV)/.installed
	$(BIN)/ruff check platform tests experiments perf tools
ifeq ($(strip $(PYTEST_ARGS)),)
	logs=$$(mktemp -d); \
	  $(BIN)/python -m pytest tests/test_train_*.py $(AFTER_TRAIN_TESTS) > $$logs/train 2>&1 & \
	  train=$$!; \
	  $(BIN)/python -m pytest $(E2E_TESTS) > $$logs/e2e 2>&1 & e2e=$$!; \
	  $(BIN)/python -m pytest --ignore-glob='tests/test_train_*' \
	    $(addprefix --ignore=,$(E2E_TESTS) $(AFTER_TRAIN_TESTS)); rest=$$?; \
	  wait $$e2e; e2e=$$?; wait $$train; train=$$?; \
	  echo "== $(E2E_TESTS) (ran alongside) =="; cat $$logs/e2e; \
	  echo "== tests/test_train_*.py $(AFTER_TRAIN_TESTS) (ran alongside) =="; \
	  cat $$logs/train; rm -rf $$logs; \
	  echo "pytest exit codes: rest $$rest, end-to-end $$e2e, training $$train"; \
	  [ $$rest -eq 0 ] && [ $$e2e -eq 0 ] && [ $$train -eq 0 ]
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

# A real 2-node Ray cluster on this machine (root, Linux namespaces): `ray up` / `ray submit` /
# `ray down` on cluster-onprem.yaml, see tests/cluster/run_cluster_test.sh.
cluster-test: $(VENV)/.installed
	MSREID_CLUSTER_VENV='$(abspath $(VENV))' tests/cluster/run_cluster_test.sh

# The cloud shape of the same test: no shared directory, everything on an S3-compatible store
# (SeaweedFS on loopback) named by AWS_ENDPOINT_URL; see tests/cluster/run_cluster_test.sh --s3.
cluster-test-s3: $(VENV)/.installed
	MSREID_CLUSTER_VENV='$(abspath $(VENV))' tests/cluster/run_cluster_test.sh --s3

# Prints the link that opens the benchmark's cells, then serves the UI on 127.0.0.1:5000.
ui: $(VENV)/.installed
	$(BIN)/msreid ui --serve --tracking-uri sqlite:///$(CURDIR)/mlflow.db

clean-venv:
	rm -rf $(VENV)
