# The two set-up commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml switch/core/_authorize.pyx
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel Cython
	# Editable install compiles the Cython core in place (build_ext --inplace).
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -c "import switch.core as c; assert c.COMPILED, 'compiled core not loaded'"
	touch $(STAMP)

demo: install
	$(PY) -m switch demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf build *.egg-info switch/core/*.c switch/core/*.so $(VENV)
