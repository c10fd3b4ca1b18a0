# distill-sbs: `make test` (whole suite) and `make demo` (the main job).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2
DEMO_ARGS ?=

.PHONY: test demo install clean

$(VENV)/.installed-test: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[test]'
	touch $@

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e .
	touch $@

install: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: $(VENV)/.installed
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m distill_sbs.experiments.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
