#!/usr/bin/env bash
# What tests/test_ui_e2e.py needs to drive the MLflow UI in a headless browser, on a clean Debian machine:
#   - Debian's Chromium (/usr/bin/chromium), from apt, when it is missing;
#   - Playwright's Python package (it bundles its driver) into the active Python environment.
# Never `playwright install`: no browser download, Playwright drives /usr/bin/chromium (executable_path).
# Idempotent and quiet: a second run installs nothing and takes about a second. Output only on failure.
# Run it after activating the project's virtualenv (or set PYTHON=/path/to/python).
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.2  # installs with the project's stack (Python 3.11) and drives Debian 12's Chromium 156
PYTHON=${PYTHON:-python}
start=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_quietly() {  # run "$@", show its output only if it fails
    if ! "$@" >"$log" 2>&1; then
        echo "install_browser.sh: failed: $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

if [ ! -x /usr/bin/chromium ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "install_browser.sh: need root (or sudo) for apt-get" >&2; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    run_quietly $sudo apt-get update -qq
    run_quietly $sudo apt-get install -y -qq --no-install-recommends chromium
fi
/usr/bin/chromium --version >/dev/null 2>&1 || { echo "install_browser.sh: /usr/bin/chromium does not run" >&2; exit 1; }

installed=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null || true)
if [ "$installed" != "$PLAYWRIGHT_VERSION" ]; then
    run_quietly "$PYTHON" -m pip install -q --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION"
fi
"$PYTHON" -c 'from playwright.sync_api import sync_playwright' \
    || { echo "install_browser.sh: playwright does not import" >&2; exit 1; }

echo "install_browser.sh: $(/usr/bin/chromium --version 2>/dev/null | head -n 1), playwright $PLAYWRIGHT_VERSION" \
     "ready in $((SECONDS - start)) s"
