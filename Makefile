# Suanli Exchange — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SERVE  ?= 1
DEMANDS ?= 2000

.PHONY: run test install services browser check clean messages bench-holds bench-engine bench-replay bench-cycle bench-load bench-api

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ needed"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## The demo on the real Alibaba trace on the embedded default (SQLite, in-process Celery),
## then the site on http://127.0.0.1:8000 (SERVE=0 stops after the report).
run: install
	env -u DATABASE_URL -u REDIS_URL DJANGO_SETTINGS_MODULE=marketplace.settings.local \
		$(PY) manage.py demo --fresh --demands $(DEMANDS)
	@if [ "$(SERVE)" != "0" ]; then \
		env -u DATABASE_URL -u REDIS_URL DJANGO_SETTINGS_MODULE=marketplace.settings.local \
		$(PY) manage.py runserver 127.0.0.1:8000 --noreload; fi

## The whole suite against the local PostgreSQL and Redis, after the static checks.
test: install services browser check
	$(PY) -m pytest

services:
	./scripts/ensure-services.sh

browser:
	./scripts/ensure-chromium.sh

check: install
	DJANGO_SETTINGS_MODULE=marketplace.settings.test $(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

## Regenerate the zh-hans catalogue from the sources, fill it from locale/zh_hans_strings.py
## (fails on any untranslated string) and compile the committed .mo (needs gettext).
messages: install
	rm -f locale/zh_Hans/LC_MESSAGES/django.po
	DJANGO_SETTINGS_MODULE=marketplace.settings.test $(PY) manage.py makemessages -l zh_Hans \
		-i '.venv/*' -i 'tests/*' -i 'staticfiles/*' -i 'locale/*' -i 'scripts/*' --no-location
	$(PY) scripts/fill_po.py
	msgfmt --check-format -o locale/zh_Hans/LC_MESSAGES/django.mo locale/zh_Hans/LC_MESSAGES/django.po

## Reservation holds/s through the service layer next to pgbench TPC-B on the local PostgreSQL
## (own databases suanli_bench_holds and suanli_pgbench_holds, dropped afterwards; BENCH_DB_SUFFIX
## appends to both names so runs sharing a server stay apart). Not part of `make test`.
BENCH_CLIENTS ?= 2
BENCH_HOLDS ?= 200
bench-holds: install services
	$(PY) bench/bench_holds.py --clients $(BENCH_CLIENTS) --holds $(BENCH_HOLDS)

## The API under gunicorn (docker/gunicorn.conf.py, 2 sync workers per CPU) and wrk (50
## connections) on loopback, 2 rounds: offer search, demand create and reservation list next to a
## bare Django "hello" view, with the server's CPU ms per request (own database suanli_bench_api,
## dropped afterwards). Installs Debian's wrk when missing. Not part of `make test`.
bench-api: install services
	command -v wrk >/dev/null || { apt-get install -y wrk || sudo apt-get install -y wrk; }
	$(PY) bench/bench_api.py

clean:
	rm -rf $(VENV) db.sqlite3 demo-report.json .pytest_cache .mypy_cache .ruff_cache

## Benchmarks (not part of `make test`); numbers are printed as tables.
bench-engine: install
	cd bench && ../$(PY) engine.py

## The whole 149-day trace replayed in simulated time against the fleet (engine only): GPU
## utilisation and waiting time for fcfs, greedy and optimal. REPLAY_ARGS passes flags
## (e.g. '--days 110:149 --nodes 30 --policies greedy,optimal'; --help lists them).
REPLAY_ARGS ?=
bench-replay: install
	cd bench && ../$(PY) replay.py $(REPLAY_ARGS)

## One whole matching cycle writing CYCLE_N reservations (holds, ledger entries) on PostgreSQL,
## next to pgbench TPC-B (own databases, dropped afterwards). Not part of `make test`.
CYCLE_N ?= 10000
bench-cycle: install services
	$(PY) bench/bench_cycle.py --n $(CYCLE_N)

## Load test (not part of `make test`): 200 SMEs + 20 providers for BENCH_DURATION s (300).
bench-load: install services
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,bench]'
	$(PY) bench/bench_load.py
