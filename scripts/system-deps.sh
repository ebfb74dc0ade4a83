#!/usr/bin/env bash
# Installs the system packages traitflow runs with: Debian's redis-server (embedded Redis),
# wrk (the API benchmark) and chromium (the browser the profile explorer's test drives,
# through Playwright: Playwright's own browser download needs the internet). Idempotent;
# does nothing when all are present.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "traitflow needs: ${missing[*]}. Install them with your package manager," >&2
  echo "or point TRAITFLOW_REDIS_URL at a Redis of your own." >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]} (Debian packages)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
