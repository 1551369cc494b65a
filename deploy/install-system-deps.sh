#!/usr/bin/env bash
# Installs what stafet needs outside Python when it is missing: Java 17+ (the Kafka broker),
# Maven (resolves the broker jars from Maven Central) and Debian's Chromium (the operator
# console's browser tests: Playwright drives /usr/bin/chromium, no browser download). Safe to
# run again: it only installs what is not there. Needs root (or sudo) on Debian/Ubuntu the first time.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
python3 -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
