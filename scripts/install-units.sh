#!/usr/bin/env bash
# Installs the systemd units of systemd/ (teredo-client, teredo-relay, teredo-server) into
# DESTDIR (default /etc/systemd/system). Never enables or starts them: that is the operator's
# `systemctl enable --now teredo-server` (docs/operate.md).
#
#   scripts/install-units.sh [DESTDIR]
#   TEREDO=/opt/teredo/bin/teredo scripts/install-units.sh   # another path than /usr/local/bin/teredo
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest=${1:-/etc/systemd/system}
teredo=${TEREDO:-/usr/local/bin/teredo}
if [[ $teredo != /* || $teredo == *[[:space:]#]* ]]; then
    echo "install-units: TEREDO must be an absolute path without spaces or '#': $teredo" >&2
    exit 2
fi
install -d -m 755 "$dest"
for unit in "$here"/systemd/*.service; do
    name=$(basename "$unit")
    sed "s#/usr/local/bin/teredo#$teredo#g" "$unit" >"$dest/.$name.tmp"
    chmod 644 "$dest/.$name.tmp"
    mv -f "$dest/.$name.tmp" "$dest/$name"
done
# A running systemd (not the case in containers and CI) must read the new files.
if [[ $dest == /etc/systemd/system && -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
