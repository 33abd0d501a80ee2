# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates or refreshes .venv idempotently (re-installs only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build installs from a local file on these machines; an unpinned torch would pull
# a multi-GB CUDA build. Override on a GPU machine: make test TORCH_SPEC='torch>=2.4'
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo demo-text test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,report]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/toughen demo --out runs/demo --overwrite

# char_cnn on the built-in prompt-injection set: standard vs adversarially trained (A2T-style)
demo-text: $(STAMP)
	$(VENV)/bin/toughen demo-text --out runs/demo-text --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -x

clean:
	rm -rf $(VENV) runs
