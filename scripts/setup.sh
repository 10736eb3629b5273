#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine, as root: the system packages the lab, the demo and the
# tests use, and a virtual environment (.venv) with the package and its test extras.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

apt_packages=(miredo miredo-server nftables iproute2 iputils-ping conntrack iperf3 tcpdump procps python3-venv)
# ethtool: bench.path turns the lab veths' tx offload off, inside the lab's namespaces only.
apt_packages+=(ethtool)
# systemd: systemd-analyze checks the units of systemd/; systemd-container: systemd-nspawn runs
# them under a real systemd in a throw-away container (tests/system/test_systemd.py).
apt_packages+=(systemd systemd-container)
# bird2: the anycast lab's routers and each relay's and server's BGP speaker (lab/bird.py).
apt_packages+=(bird2)
# frr: the anycast lab's other routing daemon (`teredo lab up --routing frr`, lab/frr.py): zebra,
# bgpd and bfdd run per namespace with their own files; the policy-rc.d guard below keeps the
# package's frr service from starting on this host.
apt_packages+=(frr)
# miniupnpd: the UPnP IGD of the lab's symmetric-upnp NAT (lab/upnp.py), run only inside that NAT's
# namespace with its own files; the policy-rc.d guard below keeps the package's service from
# starting on this host.
apt_packages+=(miniupnpd-nftables)
# miniupnpc: its upnpc lists the IGD's mappings from inside the NAT (tests/system/test_upnp_client.py).
apt_packages+=(miniupnpc)
# The kernel data path (docs/kernel.md): clang/llvm and libbpf-dev build src/teredo/bpf/*.bpf.c
# (scripts/build-bpf.sh, below); libbpf1 loads them at run time; bpftool shows maps and links;
# linux-libc-dev has the uapi headers the programs include.
apt_packages+=(clang llvm libbpf-dev libbpf1 bpftool linux-libc-dev)
# linux-perf: bench.path_profile's `perf record` of a lab's 64-byte UDP run (docs/benchmarks.md).
apt_packages+=(linux-perf)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages (${missing[*]}); run this as root" >&2
        exit 1
    fi
    # Installing miredo must not start Miredo on this host: it would create a tunnel and contact a
    # public Teredo server. A policy-rc.d that denies every service start is put in place for the
    # install when the machine has none, and removed afterwards.
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$guard"
        chmod 755 "$guard"
    fi
    trap '[[ -n "$guard" ]] && rm -f "$guard"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Before the package is installed: the objects ship in it (pyproject.toml artifacts).
bash scripts/build-bpf.sh

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
stamp=.venv/.teredo-installed
if [[ ! -e $stamp || pyproject.toml -nt $stamp ]]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
# An editable install has no bytecode, and environments with PYTHONDONTWRITEBYTECODE set never
# write it: every daemon the lab starts would compile the package again (about 100 ms of its
# start-up). Stale files are harmless: Python checks each against its source.
.venv/bin/python -m compileall -q src

# The unprivileged user the daemons become after set-up with --user teredo / "User teredo"
# (io/privileges.py; the systemd units use DynamicUser= instead).
if [[ $(id -u) -eq 0 ]] && ! getent passwd teredo >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin teredo
fi

# The daemons' systemd units (systemd/), installed for the operator, never enabled or started.
if [[ $(id -u) -eq 0 ]]; then
    bash scripts/install-units.sh
fi
