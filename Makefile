# Dockyard: `make up` runs it on this machine, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
INSTALLED = $(VENV)/.installed
ASSETS    = dockyard/web/static/vendor/.installed

.PHONY: up test test-compose lint install assets images clean docs bench bench-quick

up: install
	$(BIN)/dockyard up

test: install
	$(BIN)/pytest -m "not compose" $(PYTEST_ARGS)

# The docker compose stack end to end (docker-compose 1.29, offline images): ~2.5 min with
# the images built, ~8 min when they are built cold, so it runs apart from `make test`.
test-compose: install
	$(BIN)/pytest -m compose $(PYTEST_ARGS)

# Style, and the layout's import rules (pyproject.toml [tool.importlinter]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

install: $(INSTALLED) $(ASSETS)

$(INSTALLED): pyproject.toml images/client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e images/client
	touch $@

# The proxy and the front-end assets come from the npm registry into the project
# (never global, never a CDN at run time).
$(ASSETS): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p dockyard/web/static/vendor
	cp node_modules/bootstrap/dist/css/bootstrap.min.css \
	   node_modules/bootstrap/dist/js/bootstrap.bundle.min.js \
	   node_modules/htmx.org/dist/htmx.min.js \
	   node_modules/cytoscape/dist/cytoscape.min.js \
	   node_modules/cytoscape-dagre/dist/cytoscape-dagre.min.js dockyard/web/static/vendor/
	touch $@

images: install
	$(BIN)/dockyard images build

# Every benchmark in bench/, one at a time, against its raw baseline in the same run;
# writes docs/benchmarks.md. bench-quick: each in its --quick mode (a few minutes each).
bench: images
	$(BIN)/python bench/run_all.py

bench-quick: images
	$(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) node_modules dockyard/web/static/vendor

# Regenerate the README's configuration table from dockyard/settings/__init__.py.
docs: install
	$(BIN)/python -c "import re, pathlib; from dockyard.settings import markdown_table; p = pathlib.Path('README.md'); s = p.read_text(); p.write_text(re.sub(r'(<!-- settings:start -->\n).*?(<!-- settings:end -->)', lambda m: m.group(1) + markdown_table() + '\n' + m.group(2), s, flags=re.S))"
