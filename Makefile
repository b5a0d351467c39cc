# Two commands do everything on a fresh machine: `make demo` and `make test`.
# CPU set-up: the CPU torch wheel, sam2 without its CUDA extension and without torchvision
# (which would pull a multi-GB CUDA torch), then the rest of setup.cfg's dependencies.
# GPU set-up: see README (install CUDA torch + torchvision first, then `pip install -e .`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
BUDGET ?= 60
# the random-weight reduced SAM2: no download, CPU-sized (README)
MODEL ?= micro

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile scripts/deps.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation --no-deps "sam2==1.1.0"
	$(PY) scripts/deps.py --skip torch sam2 --extras dev > $(VENV)/requirements-cpu.txt
	$(PY) -m pip install -q -r $(VENV)/requirements-cpu.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: install
	$(PY) -m qtt_ray.tune --model $(MODEL) --budget $(BUDGET)

test: install
	$(PY) -m ruff check qtt_ray tests scripts
	$(PY) -m mypy
	$(PY) -m pytest

bench: install  # the headline replay (README "Benchmarks"); ~10 min on 2 cores
	$(PY) -m qtt_ray.bench replay --train-meta qttseg --budgets 60 120 180 300 600 --seeds 10 \
		--methods zero-shot quicktune --jobs 2 --out runs/bench

lint: install
	$(PY) -m ruff check qtt_ray tests scripts
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info
