#!/usr/bin/env bash
# Run inside the test container of tests/system/test_systemd.py by teredo-check.service, under
# systemd as PID 1: drives the units and writes /results/report, one "KEY VALUE" per line (and
# `systemctl status` of the units to /results/journal for the test's failure messages).
out=/results/report
put() { printf '%s %s\n' "$1" "$2" >>"$out"; }
prop() { systemctl show -P "$2" "$1"; }
dump() { systemctl status --no-pager -l -n 40 "$1" >>/results/journal 2>&1; }
scrape() { /usr/bin/python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }

put booted yes
timeout 60 systemctl start teredo-server.service; put server_start $?
[ "$(prop teredo-server.service ActiveState)" = active ] || dump teredo-server.service
put server_state "$(prop teredo-server.service ActiveState)/$(prop teredo-server.service SubState)"
put server_status "$(prop teredo-server.service StatusText)"
pid=$(prop teredo-server.service MainPID)
put server_uid "$(stat -c %u /proc/$pid)"
put server_caps "$(grep CapEff /proc/$pid/status | cut -f2)"
scrape http://127.0.0.1:9544/metrics | grep -E '^teredo_server_router_advertisements_total ' | sed 's/^/server_metric_/' >>"$out"

timeout 60 systemctl start teredo-client.service; put client_start $?
[ "$(prop teredo-client.service ActiveState)" = active ] || dump teredo-client.service
put client_state "$(prop teredo-client.service ActiveState)/$(prop teredo-client.service SubState)"
put client_status "$(prop teredo-client.service StatusText)"
# (no awk: /etc/alternatives is not in the volatile /etc)
put client_address "$(ip -6 -o addr show dev teredo scope global | sed -n 's/.* inet6 \([^ ]*\) .*/\1/p')"
scrape http://127.0.0.1:9546/metrics | grep -E '^teredo_client_qualified ' | sed 's/^/client_metric_/' >>"$out"
put status_roles "$(/opt/teredo/bin/teredo status --json | /usr/bin/python3 -c 'import json, sys; print(",".join(sorted(d["role"] for d in json.load(sys.stdin))))')"

timeout 60 systemctl start teredo-relay.service; put relay_start $?
[ "$(prop teredo-relay.service ActiveState)" = active ] || dump teredo-relay.service
put relay_status "$(prop teredo-relay.service StatusText)"
put relay_caps "$(grep CapEff "/proc/$(prop teredo-relay.service MainPID)/status" | cut -f2)"
scrape http://127.0.0.1:9545/metrics | grep -E '^teredo_peer_capacity ' | sed 's/^/relay_metric_/' >>"$out"

systemctl reload teredo-server.service; put server_reload $?
put server_state_after_reload "$(prop teredo-server.service ActiveState)"
put server_pid_after_reload "$([ "$(prop teredo-server.service MainPID)" = "$pid" ] && echo same || echo changed)"

systemctl stop teredo-client.service teredo-relay.service teredo-server.service; put stop $?
put relay_result "$(prop teredo-relay.service Result)/$(prop teredo-relay.service ActiveState)"
put client_result "$(prop teredo-client.service Result)/$(prop teredo-client.service ActiveState)"
put server_result "$(prop teredo-server.service Result)/$(prop teredo-server.service ActiveState)"
put tun_left "$(ip -o link show dev teredo 2>/dev/null | wc -l)"
put done yes
dump teredo-server.service
dump teredo-client.service
