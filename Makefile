# Two entry points for a fresh machine (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-8)

.PHONY: install demo test bench clean-venv

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build (see ../shared/NOTES.md).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

# StepSaver picks the steps when its artifact is committed; otherwise a fixed 20 steps.
demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/dynagen run images --prompts examples/prompts.jsonl --out out/demo \
		$(if $(wildcard models/stepsaver/config.json),,--steps 20)

# The layer contract (pyproject.toml, [tool.importlinter]) first: seconds, and a violation names the import.
test: install
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
