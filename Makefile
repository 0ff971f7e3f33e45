# introspect: `make demo` runs the whole pipeline on synthetic faces; `make test` runs the tests.
# Every stage reads a pipeline file: `make extract PIPELINE=pipelines/mine.toml`.
PIPELINE ?= pipelines/demo.toml
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INTROSPECT := $(BIN)/introspect
STAMP := $(VENV)/.installed

.PHONY: setup model data align extract join sweep cluster evaluate merge label report demo browser lint test bench fuzz clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,distributed]'
	touch $(STAMP)

model: setup
	$(INTROSPECT) model sface --out models

data: setup
	$(INTROSPECT) synth --pipeline $(PIPELINE)

align: setup
	$(INTROSPECT) align --pipeline $(PIPELINE)

extract: setup
	$(INTROSPECT) extract --pipeline $(PIPELINE)

join: setup
	$(INTROSPECT) join --pipeline $(PIPELINE)

sweep: setup
	$(INTROSPECT) sweep --pipeline $(PIPELINE)

cluster: setup
	$(INTROSPECT) cluster --pipeline $(PIPELINE)

# Only for synthetic data, whose planted attributes are known.
evaluate: setup
	$(INTROSPECT) evaluate --pipeline $(PIPELINE)

merge: setup
	$(INTROSPECT) merge --pipeline $(PIPELINE)

label: setup
	$(INTROSPECT) label --pipeline $(PIPELINE)

report: setup
	$(INTROSPECT) report --pipeline $(PIPELINE)

demo: model data extract sweep cluster evaluate merge label report

# The report's test drives Debian's chromium (headless); installed here when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; } \
		|| echo "introspect: could not install chromium (apt-get); the browser test will be skipped"

# ruff: the formatter and the linter (settings in pyproject.toml).
lint: setup
	$(BIN)/ruff format --check introspect tests bench
	$(BIN)/ruff check introspect tests bench

test: setup model browser lint
	$(BIN)/python -m pytest -q

bench: setup model
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/label.py

clean:
	rm -rf runs

# kill -9 every stage at every file write, rename and delete; rerun; compare (about 15 minutes on 2 cores).
fuzz: setup
	$(BIN)/python tests/fuzz/run.py
