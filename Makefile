# Quick start: `make demo` and `make test`. Both create .venv from requirements.lock on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
ROS_PKG := ros_ws/src/rl_policy_ros

.PHONY: setup demo test test-fast lint bench-setup clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml $(ROS_PKG)/setup.py
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . -e $(ROS_PKG)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/rlctl demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check sim rl_control deploy tests $(ROS_PKG)
	$(VENV)/bin/hadolint Dockerfile

# Benchmark peers (EnvPool) live only in .venv-bench: the lock file + requirements-bench.txt, and the
# project itself editable without dependencies. Run benchmarks with .venv-bench/bin/rlctl bench ...
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.setup-done

bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): requirements.lock requirements-bench.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-bench.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(BENCH_STAMP)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
