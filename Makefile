# make demo / make test: both create .venv from the pinned requirements if it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup clean-venv bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

demo: setup
	$(BIN)/scirl train trainer.run_name=demo trainer.overwrite=true  # an earlier demo moves to runs/demo.old-<time>

test: setup
	$(BIN)/python -m pytest tests

bench: setup
	$(BIN)/python bench/vs_trl.py

clean-venv:
	rm -rf $(VENV)
