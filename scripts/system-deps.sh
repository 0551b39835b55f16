#!/usr/bin/env bash
# System packages the tests use (a real Prometheus server). Skipped when already present.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "==> install Debian's prometheus package (needed by the metrics tests): sudo apt-get install prometheus" >&2
  exit 0
fi
echo "==> installing Debian's prometheus package for the metrics tests"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
