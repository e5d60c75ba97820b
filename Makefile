# Every target bootstraps .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit clean

# facenet-pytorch (MTCNN face detector, weights bundled) declares torch<2.3 in its metadata but runs on torch 2.14:
# it is installed last and without its dependencies, so pip's resolver never sees the stale pin; the project install
# does not warn about it either (--no-warn-conflicts: the only package outside its resolution is facenet-pytorch).
# PYTHONWARNINGS=ignore silences setuptools' generic "editable installation" banner. See docs/troubleshooting.md.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	PYTHONWARNINGS=ignore $(BIN)/pip install -q --no-warn-conflicts -e '.[dev,ray]'
	@echo "note: facenet-pytorch 2.6.0 is installed with --no-deps: its torch<2.3 pin is stale (it runs on torch 2.14)"
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	$(BIN)/emo8 annotate install
	touch $(STAMP)

setup: $(STAMP)

# pipelines/demo.yaml: the whole chain on the bundled samples, offline, into demo-workspace/ (a second run does
# nothing: every step is up to date; `rm -rf demo-workspace` starts over).
demo: $(STAMP)
	$(BIN)/emo8 build pipelines/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check emo8 uniemox tests benchmarks
	$(BIN)/ruff format --check emo8 uniemox tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
