# The two set-up commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every runtime, test, benchmark and build dependency, pinned with hashes (`make lock`).
LOCK := requirements/lock.txt
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.6.2

.PHONY: install demo test simulate clean lock lock-upgrade

install: $(STAMP)

# Every file pip fetches is a wheel checked against the lock's hashes, the build's setuptools,
# wheel and Cython included: the project itself is then built without build isolation, which
# would fetch them again unchecked. pip itself is the one the venv was created with.
$(STAMP): $(LOCK) setup.py pyproject.toml switch/core/_authorize.pyx \
		switch/codec/_frame_key.pyx switch/codec/_sha256_x86.h \
		switch/persistence/_key_order.pyx
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --only-binary :all: -r $(LOCK)
	# Editable install compiles the Cython core in place (build_ext --inplace).
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import switch.core as c; assert c.COMPILED, 'compiled core not loaded'"
	$(PY) -c "import switch.codec._frame_key"
	$(PY) -c "import switch.persistence._key_order"
	touch $(STAMP)

demo: install
	$(PY) -m switch demo

test: install
	$(PY) -m pytest -q

# The ledger simulation over SEEDS seeds from FIRST (a finding prints the line that repeats
# it); SIMFLAGS="--only NAME" checks one invariant.
SEEDS ?= 1000
FIRST ?= 0
SIMFLAGS ?=
simulate: install
	$(PY) -m tests.simulation.run --seeds $(SEEDS) --first $(FIRST) $(SIMFLAGS)

# Regenerates $(LOCK) from setup.py (with its test and bench extras) and pyproject.toml's
# build requirements; needs the network (PyPI). `lock` keeps every pin
# that still satisfies them; `lock-upgrade` moves every pin to the newest release. Review the
# diff, run `make test`, commit: upgrades happen on purpose.
LOCK_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--all-build-deps --extra test --extra bench --strip-extras \
	--no-emit-index-url --no-emit-find-links \
	--output-file $(LOCK) setup.py

$(LOCK_VENV)/bin/pip-compile:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet '$(PIP_TOOLS)'

lock: $(LOCK_VENV)/bin/pip-compile
	$(LOCK_COMPILE)

lock-upgrade: $(LOCK_VENV)/bin/pip-compile
	$(LOCK_COMPILE) --upgrade

clean:
	rm -rf build *.egg-info switch/core/*.c switch/core/*.so switch/codec/*.c switch/codec/*.so $(VENV) $(LOCK_VENV)
