# `make demo`: set up a venv from scratch and run all four stages on sample_data/.
# `make test`: set up the same venv (with the dev extra) and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_WS ?= demo-ws

.PHONY: demo test install clean gpu-carry

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fercure demo --workspace $(DEMO_WS)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_WS) .pytest_cache

# What benchmarks/gpu_check.sh needs on a GPU machine without network: .whl/ (facenet-pytorch) and
# .bench/fer.tgz (the FER2013+FER+ benchmark from ../shared).
gpu-carry:
	PYTHON=$(PYTHON) bash benchmarks/gpu_carry.sh
