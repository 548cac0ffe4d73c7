#!/usr/bin/env bash
# Start what the test suite talks to, when it is not already up: PostgreSQL, Redis, and
# Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium; it cannot
# download a browser of its own here).
set -euo pipefail

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# axe-core from the npm registry, for the accessibility browser test (tests/e2e/test_accessibility.py),
# into an ignored folder of the checkout.
AXE_VERSION=4.14.1
AXE=.test-deps/node_modules/axe-core
if ! grep -qs "\"version\": \"$AXE_VERSION\"" "$AXE/package.json"; then
  if ! command -v npm >/dev/null; then
    echo "need npm for axe-core (apt-get install npm)" >&2
    exit 1
  fi
  echo "installing axe-core $AXE_VERSION into .test-deps/"
  npm install --prefix .test-deps --no-save --no-audit --no-fund --loglevel=error "axe-core@$AXE_VERSION"
fi
