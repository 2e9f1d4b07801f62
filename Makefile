# Everything runs from a project-local virtual environment that `make` creates.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= workdirs/default
# Two worker processes: compilation dominates the suite and is single-threaded. Whole
# files go to one worker, so module-scoped fixtures (small training runs) are built once.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: venv test train clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

train: $(STAMP)
	$(PY) -m experiments.train --config=experiments/configs/default.py --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
