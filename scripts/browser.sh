#!/usr/bin/env bash
# The browser the tests drive (tests/browser.py): Debian's chromium and its matching chromium-driver, from apt.
#   scripts/browser.sh install   installs them if either is missing (root; what .ci/run does)
#   scripts/browser.sh check     prints both versions; exit 1 if either is missing
set -euo pipefail
have() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }
case "${1:-}" in
    install)
        if ! have; then
            export DEBIAN_FRONTEND=noninteractive
            # the package lists may already be fresh (the SLURM setup updates them): update only when needed
            apt-get install -y -q --no-install-recommends chromium chromium-driver >/tmp/browser-apt.log 2>&1 || {
                apt-get update -q >>/tmp/browser-apt.log 2>&1
                apt-get install -y -q --no-install-recommends chromium chromium-driver >>/tmp/browser-apt.log 2>&1 ||
                    { echo "browser: apt-get install failed (see /tmp/browser-apt.log)" >&2; exit 1; }
            }
        fi
        "$0" check ;;
    check)
        have || { echo "browser: chromium or chromedriver missing (scripts/browser.sh install)" >&2; exit 1; }
        chromium --version 2>/dev/null | head -1
        chromedriver --version | head -1 ;;
    *) echo "usage: $0 install|check" >&2; exit 2 ;;
esac
