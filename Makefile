# Two commands do all set-up on a bare machine with Python 3.11+: `make serve` and `make test`.
# Without uv on the PATH, uv is installed from PyPI into .tools/ on first use; `uv run` then creates
# .venv from uv.lock and keeps it in sync.
# uv's version where the project installs it itself: in .tools/, and in the images (ci/image-uv.sh)
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile
# torch's modules again in every process (6 s instead of 4 s per import here), and the test suite and a
# serve start many processes.
RUN := $(UV) run --frozen --compile-bytecode

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet uv==$(UV_VERSION)

.PHONY: serve demo test test-architectures lint compose-smoke quickstart-check

serve: $(filter .tools/bin/uv,$(UV))  ## the API and one worker on an embedded store (SQLite), at http://127.0.0.1:8000 (PORT=… for another port)
	$(RUN) rlprune serve $(if $(PORT),--port $(PORT))

demo: $(filter .tools/bin/uv,$(UV))  ## prune a VGG-11 on the bundled digits to <= 50 % of its MACs (a few minutes on a laptop CPU)
	$(RUN) rlprune run examples/digits.json --out runs/digits

# Test files run side by side, one process per core of a 2-core machine (pytest-xdist): most of the suite's
# time is spent waiting on the servers, workers and databases it starts, which one process leaves half idle.
# A file stays in one process (its module-wide servers and Redis database are its own); files with slow
# tests start first (tests/conftest.py), so no long one starts last.
TEST_PROCESSES ?= 2

test: $(filter .tools/bin/uv,$(UV))  ## the test suite, then the linter
	$(RUN) pytest -q -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder -m "not every_architecture" --durations=20
	$(RUN) ruff check .

# One test per admitted architecture, each spread over the processes on its own (--dist load).
test-architectures: $(filter .tools/bin/uv,$(UV))  ## every admitted architecture pruned and exported to ONNX (CI runs it after the suite)
	$(RUN) pytest -q -n $(TEST_PROCESSES) --dist load -m every_architecture tests/architectures --durations=20

lint: $(filter .tools/bin/uv,$(UV))
	$(RUN) ruff check .

compose-smoke: $(filter .tools/bin/uv,$(UV))  ## docker compose up for real, a tiny job through it, and down again (root, 16 GB free disk)
	bash ci/compose-smoke.sh

quickstart-check:  ## the README's quick start pasted into fresh clones, with and without uv on the PATH (ci/quickstart.py)
	python3 ci/quickstart.py
