#!/usr/bin/env bash
# The whole test suite against the running Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379).
# Installs what the tests need first: the project with its test extras, a Compose CLI to validate
# docker-compose.yml (Debian's docker-compose; the v2 plugin is used instead where it is installed), and
# Debian's Chromium for the headless page test, and pg_dump.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "test: installing a Compose CLI (docker-compose) to validate docker-compose.yml with apt-get (a minute or two) ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null 2>&1 \
      || echo "warning: could not install docker-compose; tests/deploy/test_compose.py will fail" >&2
  fi
fi
# Headless Chromium for the sweep page test (tests/api/test_charts_page.py); Debian's package.
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "test: installing headless Chromium for the page tests with apt-get (a minute or two) ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "warning: could not install chromium; tests/api/test_charts_page.py will fail" >&2
  fi
fi
# pg_dump for the test that dumps the database and looks for API keys (tests/api/test_keys_and_limits.py).
if ! command -v pg_dump >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "test: installing pg_dump (postgresql-client) with apt-get (a minute or two) ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client) >/dev/null 2>&1 \
      || echo "warning: could not install postgresql-client; tests/api/test_keys_and_limits.py will fail" >&2
  fi
fi
echo "test: running pytest $* (README's Tests section says what each marker holds)"
exec .venv/bin/python -m pytest "$@"
