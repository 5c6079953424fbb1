# Every target sets up its own virtual environment on first use: `make demo` installs only
# what the demo needs (PyTorch and the report); `make test` adds every framework and tool.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.demo-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: venv test test-long demo lint docs bench bench-quick clean

venv: $(TEST_STAMP)

$(DEMO_STAMP): pyproject.toml requirements-demo.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-demo.txt -e '.[demo]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP) requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt -e '.[torch,keras,jax,tf1,report,dataset,ray,docs,dev]'
	# grad-cam requires torchvision, which cannot sit beside the pinned torch; its tests
	# import it beside a stand-in, so its own dependency list is skipped.
	$(PY) -m pip install -q --no-deps grad-cam==1.5.7
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# The hypothesis sweeps with many more examples (minutes; CI runs a few per method).
test-long: $(TEST_STAMP)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# The documentation site into site/ (examples executed, warnings are errors).
docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

demo: $(DEMO_STAMP)
	$(PY) -m salience.demo --out demo-out

bench: $(TEST_STAMP)
	$(PY) bench/run.py --out bench/RESULTS.md

bench-quick: $(TEST_STAMP)
	$(PY) bench/run.py --quick --out bench/RESULTS-quick.md

clean:
	rm -rf $(VENV) demo-out site
