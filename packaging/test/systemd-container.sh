#!/usr/bin/env bash
# systemd-container.sh — the lote .deb under a real systemd: boots a Debian 12
# container (systemd as its PID 1, systemd-nspawn) on a host that need not run
# systemd itself, installs the package and drives the units as an operator
# would. Part of .ci/run; also runnable by hand:
#
#   sudo packaging/test/systemd-container.sh target/debian/lote_*.deb
#
# What it checks (SPEC §3.8 "As a systemd service" and the README's
# "Install as a service"):
#   - lote.service starts (Type=notify), handles spool items, shows STATUS=,
#     and ExecStartPre does not put the effective config in the journal;
#   - `systemctl reload` applies a valid config and FAILS on an invalid one,
#     the old config running on (same PID, items still handled);
#   - while a slow handler finishes its item after `systemctl stop`, STATUS=
#     and status.json say stopping/draining, never running; exit 0;
#   - a config that fails ExecStartPre ends `failed` (start-limit-hit) with
#     a bounded NRestarts instead of restarting for ever;
#   - lote@NAME and lote-once@NAME (.timer and the service it starts);
#   - an inbox fed over the unit's Unix socket in /run/lote/NAME/ and by
#     `lote push` as the user lote; a 202 is on disk; a stop keeps the rest;
#   - what the sandbox's system call filter blocks for an exec handler;
#   - dpkg -r stops everything.
#
# Needs root with CAP_SYS_ADMIN, apt (installs mmdebstrap, systemd-container
# when missing) and the Debian mirror this host's apt uses (MIRROR= for
# another sources file or URL). Takes 1-2 minutes (most of it building the
# container's root). Always removes the container, its root and its cgroups;
# on a failure it first prints the container's journal for lote* (KEEP=1
# leaves the container running to poke at instead).
set -euo pipefail

deb=$(readlink -f "${1:?usage: $0 path/to/lote_VERSION_ARCH.deb}")
[ -f "$deb" ] || { echo "no such package: $deb" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (it boots a container)" >&2; exit 1; }

name=lote-ci-$$                       # the machine, its root and cgroups: unique per run
root=/var/tmp/$name
console=/var/tmp/$name.console.log
failures=0
started=$(date +%s)

note() { printf '%4ss  %s\n' "$(( $(date +%s) - started ))" "$*"; }
ok() { note "ok    $*"; }
bad() { note "FAIL  $*"; failures=$((failures + 1)); }
# expect WHAT COMMAND...: one check, its outcome printed.
expect() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# within SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
within() {
    local until=$(( $(date +%s) + $1 )); shift
    until "$@"; do
        [ "$(date +%s)" -lt "$until" ] || return 1
        sleep 0.2
    done
}

# --- tools -------------------------------------------------------------------
if ! command -v mmdebstrap >/dev/null || ! command -v systemd-nspawn >/dev/null \
    || ! command -v nsenter >/dev/null || ! command -v pgrep >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        mmdebstrap systemd-container util-linux procps >/dev/null
fi
if [ -z "${MIRROR:-}" ]; then
    for sources in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$sources" ]; then MIRROR=$sources; break; fi
    done
fi
: "${MIRROR:?no apt sources on this host: set MIRROR to a sources file or a mirror URL}"

# --- cleanup, armed before anything is made -------------------------------------
nspawn=
cgroups=()
cleanup() {
    local rc=$?
    if [ "${KEEP:-}" = 1 ] && [ -n "$nspawn" ]; then
        echo "KEEP=1: container $name left running (nspawn pid $nspawn, root $root)"
        return
    fi
    if [ "$rc" != 0 ] && [ -n "$nspawn" ]; then
        echo "--- the container's journal for lote*, last 60 lines"
        in_ct journalctl -u 'lote*' --no-pager -n 60 2>/dev/null || true
        echo "--- its console, last 20 lines"
        tail -n 20 "$console" 2>/dev/null || true
    fi
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        in_ct systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.2; done
        kill "$nspawn" 2>/dev/null || true
        wait "$nspawn" 2>/dev/null || true
    fi
    # nspawn leaves its payload/supervisor cgroups behind without a host systemd.
    local dir
    for dir in "${cgroups[@]}"; do
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    rm -rf "$root" "$console"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the container's root: Debian 12 with systemd as init ------------------------
note "building the container root ($root)"
# unsafe-io and no docs: a throw-away root needs neither fsyncs nor manuals.
mmdebstrap --quiet --variant=apt --include=systemd,systemd-sysv,dbus,adduser,procps,curl \
    --dpkgopt=force-unsafe-io --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='Acquire::Languages "none"' bookworm "$root" "$MIRROR"
cp "$deb" "$root/root/lote.deb"
echo "$name" >"$root/etc/hostname"

# --- boot ----------------------------------------------------------------------
# No host systemd or machined to register with (--register=no --keep-unit);
# nspawn runs in a cgroup of its own per hierarchy, removed by cleanup.
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    case $(stat -fc %T "$hierarchy" 2>/dev/null) in cgroup2fs | cgroupfs) ;; *) continue ;; esac
    mkdir -p "$hierarchy/$name" && cgroups+=("$hierarchy/$name")
done
(
    for dir in "${cgroups[@]}"; do echo "$BASHPID" >"$dir/cgroup.procs"; done
    exec systemd-nspawn --quiet -D "$root" -M "$name" --boot --register=no --keep-unit \
        --console=read-only </dev/null >"$console" 2>&1
) &
nspawn=$!

# in_ct COMMAND...: run in the container (all its namespaces), clean environment.
in_ct() {
    local init
    init=$(pgrep -P "$nspawn" -x systemd | head -n 1)
    [ -n "$init" ] || return 125
    nsenter --target "$init" --all env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
# sh_ct 'SCRIPT': a shell script in the container.
sh_ct() { in_ct sh -c "$1"; }
prop() { in_ct systemctl show "$1" -p "$2" --value; }
booted() { in_ct systemctl is-system-running --wait >/dev/null 2>&1; }
within 60 booted || { in_ct systemctl --failed --no-pager || true; echo "the container did not boot" >&2; exit 1; }
note "booted: $(in_ct systemctl --version | head -n 1)"

# drop NAME DIR: a producer drops an item (written aside, renamed in).
drop() { sh_ct "echo 'payload $1' >/var/spool/.$1 && mv /var/spool/.$1 $2/$1"; }
status_says() { prop "$1" StatusText | grep -q -- "$2"; }
journal_has() { sh_ct "journalctl -u '$1' -o cat --no-pager | grep -q -- '$2'"; }
journal_count() { sh_ct "journalctl -u '$1' -o cat --no-pager | grep -c -- '$2'" || true; }
result_is() { [ "$(prop "$1" Result)" = "$2" ]; }
state_is() { [ "$(prop "$1" ActiveState)" = "$2" ]; }
# config NAME BODY: /etc/lote/NAME.yaml with its own state and spool directories.
config() {
    sh_ct "install -d -o lote -g lote -m 2770 /var/spool/lote/$1 && cat >/etc/lote/$1.yaml" <<EOF
state_dir: /var/lib/lote/$1
session: {threads: 2, chunk: 1, poll_every: 200ms}
source: {kind: spool, path: /var/spool/lote/$1, stable_for: 0s}
metrics: {every: 200ms}
$2
EOF
}

# --- the package ---------------------------------------------------------------
expect "dpkg -i" sh_ct 'dpkg -i /root/lote.deb >/dev/null'
expect "installed, neither enabled nor started" test "$(in_ct systemctl is-enabled lote || true)" = disabled
expect "systemd-analyze verify (the installed units)" sh_ct 'cd /usr/lib/systemd/system &&
    systemd-analyze verify --man=no lote.service lote@ci.service lote-once@ci.service lote-once@ci.timer'
expect "lote check --quiet prints nothing" sh_ct '[ -z "$(runuser -u lote -- lote check --quiet -c /etc/lote/config.yaml 2>&1)" ]'

# --- lote.service with the shipped config ------------------------------------------
expect "systemctl start lote (returns after READY=1)" in_ct systemctl start lote
expect "active (running)" test "$(prop lote SubState)" = running
main_pid=$(prop lote MainPID)
for i in 1 2 3; do drop "item$i" /var/spool/lote; done
expect "3 spool items handled (STATUS=)" within 15 status_says lote "done 3 failed 0"
expect "journal: the daemon's log" journal_has lote "starting with /etc/lote/config.yaml"
# `lote check` without --quiet printed the effective config: state_dir, session, ...
expect "journal: no effective config from ExecStartPre" sh_ct \
    '! journalctl -u lote -o cat --no-pager | grep -Eq "^(state_dir|session|handler):"'

# --- reload: a valid config is applied, an invalid one refused -----------------------
expect "systemctl reload lote (valid config)" in_ct systemctl reload lote
expect "journal: config reloaded" within 10 journal_has lote "SIGHUP: config reloaded"
sighups=$(journal_count lote "SIGHUP: the config is read again")
sh_ct 'cp /etc/lote/config.yaml /root/config.good && echo "no_such_key: 1" >>/etc/lote/config.yaml'
expect "systemctl reload lote FAILS on an invalid config" sh_ct '! systemctl reload lote 2>/dev/null'
expect "journal: why, with the file and line" journal_has lote "config.yaml:.*no_such_key"
sleep 0.5
expect "still active, same main PID, no SIGHUP reached lote" test \
    "$(prop lote ActiveState) $(prop lote MainPID) $(journal_count lote "SIGHUP: the config is read again")" \
    = "active $main_pid $sighups"
drop item4 /var/spool/lote
expect "the old config still handles items" within 15 status_says lote "done 4 failed 0"
sh_ct 'cp /root/config.good /etc/lote/config.yaml'

# --- a slow stop: STATUS= and status.json say stopping, then draining --------------------
sh_ct 'sed -i -e "s|^  command: .*|  command: [\"/bin/sh\", \"-c\", \"sleep 4; cat\"]|" \
    -e "s|^  chunk: 50 |  chunk: 1  |" -e "s|^  every: 15s|  every: 200ms|" /etc/lote/config.yaml'
reloads=$(journal_count lote "SIGHUP: config reloaded")
in_ct systemctl reload lote
reloaded() { [ "$(journal_count lote "SIGHUP: config reloaded")" -gt "$reloads" ]; }
expect "reloaded with a slow handler" within 10 reloaded
drop slow1 /var/spool/lote
expect "the slow handler is busy" within 15 status_says lote "busy 1/"
in_ct systemctl stop --no-block lote
expect "STATUS= says stopping while the item in hand finishes" within 5 status_says lote "^stopping"
# From then on, until the unit is down: never "running" again.
seen=$(mktemp)
for _ in $(seq 150); do
    state_is lote deactivating || break
    { prop lote StatusText; sh_ct 'grep -o "\"state\": *\"[a-z]*\"" /var/lib/lote/status.json || true'; } >>"$seen"
    sleep 0.2
done
expect "status.json said stopping" grep -q '"stopping"' "$seen"
expect "neither said running after that" sh -c "! grep -Eq '^running|\"running\"' '$seen'"
rm -f "$seen"
expect "the unit is down" within 30 state_is lote inactive
expect "stopped with exit 0, result success" \
    test "$(prop lote ExecMainStatus) $(prop lote Result)" = "0 success"
expect "the slow item finished (done/)" in_ct test -f /var/spool/lote/done/slow1

# --- a config that fails ExecStartPre: failed, not restarting for ever ------------------
# RestartSec=1s only to be quick; the start limit is the shipped one.
sh_ct 'mkdir -p /etc/systemd/system/lote.service.d &&
    printf "[Service]\nRestartSec=1s\n" >/etc/systemd/system/lote.service.d/ci.conf &&
    sed -i "s|^  threads: 2 |  threads: 0 |" /etc/lote/config.yaml && systemctl daemon-reload'
expect "systemctl start lote fails on a bad config" sh_ct '! systemctl start lote 2>/dev/null'
expect "systemd gives up: start request repeated too quickly" within 40 journal_has lote "repeated too quickly"
restarts=$(prop lote NRestarts)
sleep 3
expect "NRestarts bounded ($restarts) and not climbing" \
    test "$(prop lote ActiveState) $(prop lote NRestarts)" = "failed $restarts"
expect "journal: the check's error" journal_has lote "config.yaml:.*threads"
sh_ct 'rm -r /etc/systemd/system/lote.service.d && cp /root/config.good /etc/lote/config.yaml &&
    systemctl daemon-reload && systemctl reset-failed lote'

# --- lote@NAME -------------------------------------------------------------------------
config alpha 'handler: {kind: exec, command: ["/bin/cat"]}'
expect "systemctl enable --now lote@alpha" in_ct systemctl enable --quiet --now lote@alpha
drop a1 /var/spool/lote/alpha
expect "lote@alpha handled its item" within 15 in_ct test -f /var/spool/lote/alpha/done/a1
expect "lote@alpha's state in /var/lib/lote/alpha" in_ct test -f /var/lib/lote/alpha/outcomes.db
sh_ct 'echo "session: {threads: 0}" >>/etc/lote/alpha.yaml'
expect "systemctl reload lote@alpha FAILS on an invalid config" sh_ct '! systemctl reload lote@alpha 2>/dev/null'
expect "lote@alpha still active" test "$(prop lote@alpha ActiveState)" = active
expect "systemctl stop lote@alpha: exit 0" sh_ct 'systemctl stop lote@alpha &&
    [ "$(systemctl show lote@alpha -p ExecMainStatus --value)" = 0 ]'

# --- an inbox fed over HTTP (a Unix socket in RuntimeDirectory=) and lote push --------------
sh_ct 'cat >/etc/lote/ingest.yaml' <<'EOF2'
state_dir: /var/lib/lote/ingest
session: {threads: 1}
source: {kind: inbox}
handler: {kind: exec, command: ["/bin/sh", "-c", "sleep 0.2; cat"]}
http: {listen: "unix:/run/lote/ingest/ingest.sock"}
metrics: {every: 200ms}
EOF2
expect "systemctl start lote@ingest" in_ct systemctl start lote@ingest
expect "the socket is in /run/lote/ingest, mode 0660" within 15 sh_ct \
    '[ "$(stat -c %a /run/lote/ingest/ingest.sock 2>/dev/null)" = 660 ]'
expect "POST /items over the socket: 202" sh_ct 'curl -sf --unix-socket /run/lote/ingest/ingest.sock \
    -X POST --data "{\"id\": \"h1\", \"payload\": \"over http\"}" http://lote/items | grep -q "\"accepted\":1"'
expect "lote push as the user lote: exit 0" sh_ct 'printf "p1\np2\n" |
    runuser -u lote -- lote push -c /etc/lote/ingest.yaml | grep -q "accepted 2"'
expect "GET /readyz: 200" sh_ct 'curl -sf --unix-socket /run/lote/ingest/ingest.sock http://lote/readyz >/dev/null'
expect "the pushed items are done" within 15 sh_ct \
    'curl -sf --unix-socket /run/lote/ingest/ingest.sock http://lote/status | grep -q "\"done\": 3"'
sh_ct 'for i in $(seq 20); do printf "q$i\n"; done | runuser -u lote -- lote push -c /etc/lote/ingest.yaml >/dev/null'
expect "systemctl stop lote@ingest: exit 0, the socket removed" sh_ct 'systemctl stop lote@ingest &&
    [ "$(systemctl show lote@ingest -p ExecMainStatus --value)" = 0 ] && [ ! -e /run/lote/ingest/ingest.sock ]'
sh_ct 'systemctl start lote@ingest'
expect "restarted, it finishes what the stop left: the inbox empties" within 30 sh_ct 'curl -sf --unix-socket /run/lote/ingest/ingest.sock http://lote/status | grep -q "\"depth\": 0"'
in_ct systemctl stop lote@ingest

# --- lote-once@NAME.timer and its service (run --once) --------------------------------------
config batch 'handler: {kind: exec, command: ["/bin/cat"]}'
sh_ct 'sed -i "s|poll_every: 200ms|deadline: 4m|" /etc/lote/batch.yaml'
expect "systemctl enable --now lote-once@batch.timer" in_ct systemctl enable --quiet --now lote-once@batch.timer
expect "the timer is scheduled" sh_ct 'systemctl list-timers --no-pager | grep -q "lote-once@batch.timer"'
drop b1 /var/spool/lote/batch
# What the timer starts at the next */5 minute, started now.
expect "systemctl start lote-once@batch.service" in_ct systemctl start lote-once@batch.service
expect "once: the item is done, result success" sh_ct 'test -f /var/spool/lote/batch/done/b1 &&
    [ "$(systemctl show lote-once@batch.service -p Result --value)" = success ]'

# --- the sandbox: what an exec handler cannot do ----------------------------------------
# Each probe runs as the handler runs (lote@probe, the full sandbox); its
# exit status and first line of stderr go to /var/lib/lote/probe/probe.txt.
sh_ct 'cat >/usr/local/bin/lote-probe' <<'EOF'
#!/bin/sh
out=/var/lib/lote/probe/probe.txt; w=/var/lib/lote/probe/w
rm -rf "$w"; mkdir -p "$w"; cd "$w" || exit 1
echo data >f; tar -cf t.tar f; mkdir x y
try() { err=$(sh -c "$2" 2>&1 >/dev/null); echo "$1: rc=$? $(echo "$err" | head -n 1)" >>"$out.new"; }
try "cp -a"         "cp -a f f.a"
try "cp -p"         "cp -p f f.p"
try "tar -x"        "tar -xf t.tar -C x"
try "tar -x --same-owner" "tar --same-owner -xf t.tar -C y"
try "install -o"    "install -o lote -m 0644 f f.i"
try "install"       "install -m 0644 f f.j"
try "chown"         "chown lote f"
try "chgrp"         "chgrp lote f"
try "nice"          "nice -n 5 true"
try "ulimit"        "ulimit -n 512"
mv "$out.new" "$out"
EOF
in_ct chmod 755 /usr/local/bin/lote-probe
config probe 'handler: {kind: exec, command: ["/usr/local/bin/lote-probe"]}'
in_ct systemctl start lote@probe
drop p1 /var/spool/lote/probe
if within 15 in_ct test -f /var/lib/lote/probe/probe.txt; then
    in_ct cat /var/lib/lote/probe/probe.txt | sed 's/^/        /'
    probe() { in_ct grep -q "^$1: $2" /var/lib/lote/probe/probe.txt; }
    # What the README's sandbox notes say (a drop-in `SystemCallFilter=@chown` allows it).
    expect "sandbox: install -o fails (EPERM)" probe "install -o" "rc=1 .*Operation not permitted"
    expect "sandbox: chown fails (EPERM)" probe "chown" "rc=1 .*Operation not permitted"
    expect "sandbox: tar --same-owner fails (EPERM)" probe "tar -x --same-owner" "rc=2 .*Operation not permitted"
    expect "sandbox: plain install, cp -a, tar -x work" \
        eval "probe install 'rc=0' && probe 'cp -a' 'rc=0' && probe 'tar -x' 'rc=0'"
else
    bad "sandbox probe: no result"
fi
# The README's drop-in gives the handler chown back (to its own user only:
# there is still no CAP_CHOWN).
sh_ct 'mkdir -p /etc/systemd/system/lote@probe.service.d &&
    printf "[Service]\nSystemCallFilter=@chown\n" >/etc/systemd/system/lote@probe.service.d/chown.conf &&
    systemctl daemon-reload && systemctl restart lote@probe && rm -f /var/lib/lote/probe/probe.txt'
drop p2 /var/spool/lote/probe
if within 15 in_ct test -f /var/lib/lote/probe/probe.txt; then
    expect "drop-in SystemCallFilter=@chown: install -o lote, chown lote work" \
        eval "probe 'install -o' 'rc=0' && probe chown 'rc=0' && probe 'tar -x --same-owner' 'rc=0'"
else
    bad "sandbox probe with @chown: no result"
fi
in_ct systemctl stop lote@probe

# --- removal -----------------------------------------------------------------------------
expect "dpkg -r lote" sh_ct 'dpkg -r lote >/dev/null'
expect "no lote unit left active" sh_ct '! systemctl list-units --state=active --no-legend "lote*" | grep -q .'

note "$failures failed check(s)"
[ "$failures" = 0 ]
