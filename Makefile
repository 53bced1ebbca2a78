# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest test-slow soak bench bench-drain dist system-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The tour in README.md runs `streamd` in a second terminal: this line puts it on PATH there.
run: $(STAMP)
	@echo 'streamd: in another terminal, put streamd on your PATH with: export PATH="$(CURDIR)/$(BIN):$$PATH"'
	$(BIN)/streamd serve

test: $(STAMP) system-tools lint typecheck pytest

# systemd-analyze and systemd-socket-activate for the unit and activation tests, strace
# for the check that every 200 follows the fdatasync of its WAL frames, and curl, jq and
# sqlite3 for the examples of README.md and docs/ (tests/docs), and the PostgreSQL
# server and HAProxy for tests/engines (nats-server and the Tansu Kafka broker come from
# PyPI with the test extras): installed when missing and we may (root with apt);
# otherwise those tests skip (tests/engines fails instead when CI is set).
system-tools:
	@if ! command -v systemd-analyze >/dev/null || ! command -v systemd-socket-activate >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	  else echo "systemd tools missing and cannot install them: their tests will be skipped"; fi; \
	fi
	@if ! command -v strace >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; \
	  else echo "strace missing and cannot install it: its test will be skipped"; fi; \
	fi
	@if ! command -v curl >/dev/null || ! command -v jq >/dev/null || ! command -v sqlite3 >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl jq sqlite3 >/dev/null; \
	  else echo "curl, jq or sqlite3 missing and cannot install them: the doc examples that use them will be skipped"; fi; \
	fi

	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null || ! command -v haproxy >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql haproxy >/dev/null; \
	  else echo "PostgreSQL or HAProxy missing and cannot install them: tests/engines will fail in CI"; fi; \
	fi
	@# Node.js and npm for tests/interop (Adobe's Node SDK, pinned in tests/interop/package-lock.json,
	@# which the suite installs with npm ci into tests/interop/node_modules).
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "node or npm missing and cannot install them: tests/interop will fail in CI"; fi; \
	fi

	@# promtool for tests/deploy, from Debian's prometheus package; only the tool is wanted,
	@# so the server that the package starts on a systemd host is stopped and disabled.
	@if ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	  else echo "promtool missing and cannot install it: tests/deploy will be skipped (and fail in CI)"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check streamd tests bench
	$(BIN)/ruff format --check streamd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Three workers on any machine: most tests wait on child processes, sockets and fsync.
pytest: $(STAMP)
	$(BIN)/pytest -q -n 3 --dist loadgroup

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# The hostile-input and fault suite in its long mode (minutes to an hour; never in CI),
# then the slow crash loops.
soak: $(STAMP) system-tools
	STREAMD_SOAK=1 $(BIN)/pytest -q tests/hostile -m 'slow or not slow'
	$(BIN)/pytest -q -m slow

# One self-contained executable zipapp (shiv): runs with the target's python3 (3.11+,
# the same minor version as the one building it: the C extensions are built for it).
dist: $(STAMP)
	mkdir -p dist
	$(BIN)/shiv --quiet -c streamd -o dist/streamd --python '/usr/bin/env python3' \
	  --reproducible --compressed .
	@echo "built dist/streamd ($$(du -h dist/streamd | cut -f1)); install with: sudo systemd/install.sh"

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.ingest

bench-drain: $(STAMP)
	$(BIN)/python -m bench.drain

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dist build
