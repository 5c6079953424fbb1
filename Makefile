# Every target sets up its own virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt -e '.[torch,keras,jax,tf1,report,dev]'
	$(PY) -m pip install -q --no-deps grad-cam==1.5.7
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q -p no:cacheprovider

lint: venv
	$(VENV)/bin/ruff check src tests bench

demo: venv
	$(PY) -m salience.demo --out demo-out

bench: venv
	$(PY) bench/run.py --out bench/RESULTS.md

bench-quick: venv
	$(PY) bench/run.py --quick --out bench/RESULTS-quick.md

clean:
	rm -rf $(VENV) demo-out
