# Two set-up commands, each creating its own virtual environment on a fresh machine:
#   make demo   runs the main job on built-in defaults (make demo CT="scan.nii.gz ..." also segments your CTs)
#   make test   installs and runs the test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; override (e.g. TORCH=torch) to let pip pick a CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/livertumorseg demo -o demo-output $(CT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache
