#!/usr/bin/env bash
# The demo: set up (Debian packages, .venv), then build a Teredo lab in network namespaces with
# our server and relay, three of our clients and one Miredo client behind NATs of several kinds
# (one symmetric), show qualification and pings, then `teredo status` of our daemons and
# `teredo probe` from behind two NATs, tear down.
# Extra arguments go to `teredo lab demo` (e.g. --client miredo --nat port-restricted --count 5).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: must run as root (it creates network namespaces and nftables rules): sudo bash scripts/demo.sh" >&2
    exit 1
fi
bash scripts/setup.sh
exec .venv/bin/teredo lab demo "$@"
