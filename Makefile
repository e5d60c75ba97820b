# Every target bootstraps .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# facenet-pytorch (MTCNN, weights bundled) pins torch<2.3 in its metadata but runs on 2.14: no deps
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/emo8 annotate install
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m emo8.demo

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
