# Two commands on a fresh machine: `make run` (the service on 127.0.0.1:8000) and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HOST    ?= 127.0.0.1
PORT    ?= 8000
# The tier without Ray runs on two pytest-xdist workers, whole modules per worker (module fixtures set up once), in
# collection order: the longest modules first (tests/conftest.py).
XDIST   := -n 2 --dist loadfile --no-loadscope-reorder
# `make bench BENCH_ARGS="--requests 1 --sizes standard --styles corporate_headshot --concurrency 1"`: a quick run.
BENCH_ARGS ?=
# The CPU build of torch: a local wheel folder where the machine has one, else PyTorch's CPU index.
WHEELS  ?= /opt/wheels
TORCH_SRC := $(if $(wildcard $(WHEELS)/torch-*.whl),--find-links $(WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
export RAY_AUTH_MODE ?= token
# uv on PATH, else the uv module (installed on first use with pip).
UV      := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: install models run test test-fast bench clean

# --compile-bytecode: every Ray worker and replica imports Ray, torch and the rest from the .pyc files written here.
# Without them each process compiles what it imports from source, and where PYTHONDONTWRITEBYTECODE is set (many
# images and CI machines) it does so at every start: a deploy of the app took 46 s instead of 18 s.
$(VENV)/.installed: requirements.txt pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || $(UV) venv -q $(VENV) --python 3.11
	$(UV) pip install -q --compile-bytecode --python $(PY) $(TORCH_SRC) -r requirements.txt -e .
	@touch $@

install: $(VENV)/.installed

models: install
	$(PY) -m cli models fetch

run: models
	$(PY) -m cli serve --host $(HOST) --port $(PORT)

# Everything (what CI runs), in two tiers: the tests that start no Ray on two workers, then the Ray tier in one process
# (one local Ray, one Serve app, the two-node cluster first); each tier ends with its slowest tests.
test: models
	$(PY) -m pytest -q -ra $(XDIST) -m "not ray" --durations=10 tests
	$(PY) -m pytest -q -ra -m ray --durations=20 tests

# The inner loop: the tests that start no Ray (markers set from the fixtures in tests/conftest.py), on two workers as
# in `make test`; one that starts Ray anyway fails here instead of slowing the tier down.
test-fast: models
	AVATAR_TESTS_WITHOUT_RAY=1 $(PY) -m pytest -q -ra $(XDIST) --durations=10 -m "not ray and not slow" tests

bench: models
	$(PY) bench/latency.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
