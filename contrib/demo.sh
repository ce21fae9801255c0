#!/usr/bin/env bash
# demo.sh - the quick-start demo: one small VM and a running broker, then a console link.
#
# Usage (as root, from anywhere):
#   contrib/demo.sh [start]   setup.sh, libvirt-up.sh up, define + start the domain
#                             broker-demo-1, start `broker serve` in the background, print
#                             a console URL (single use, valid 10 minutes)
#   contrib/demo.sh stop      stop that broker (by its PID), destroy + undefine
#                             broker-demo-1, then libvirt-up.sh down
#
# Running `start` again reuses what runs and prints a fresh console URL.
#
# Environment:
#   BROKER_LISTEN       address the broker listens on (default 127.0.0.1:6080), passed as --listen
#   BROKER_DEMO_STATE   pid file and log (default /var/lib/vm-console-broker/demo)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONTRIB="$ROOT/contrib"
STATE="${BROKER_DEMO_STATE:-/var/lib/vm-console-broker/demo}"
LISTEN="${BROKER_LISTEN:-127.0.0.1:6080}"
URI="qemu:///system"
DOMAIN="broker-demo-1"
PIDFILE="$STATE/broker.pid"
LOGFILE="$STATE/broker.log"
HEALTH_TIMEOUT=20   # seconds

log() { printf '[demo] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
# The PID in $PIDFILE, if that process is alive and still our `broker serve`.
our_broker() {
  local pid=""
  if [ -s "$PIDFILE" ]; then pid=$(tr -dc '0-9' <"$PIDFILE"); fi
  if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'broker serve'; then
    echo "$pid"
  fi
}

PORT="${LISTEN##*:}"
HOST="${LISTEN%:*}"; HOST="${HOST#[}"; HOST="${HOST%]}"
case "$HOST" in
  ""|0.0.0.0|::) HOST=127.0.0.1 ;;   # listening everywhere: talk to it over loopback
esac
[[ "$HOST" == *:* ]] && BASE="http://[$HOST]:$PORT" || BASE="http://$HOST:$PORT"

healthy() { curl -fsS -m 2 "$BASE/healthz" >/dev/null 2>&1; }

start_domain() {
  if virsh -c "$URI" dominfo "$DOMAIN" >/dev/null 2>&1; then
    if virsh -c "$URI" domstate "$DOMAIN" | grep -q '^running'; then
      log "$DOMAIN already defined and running"
      return
    fi
    log "$DOMAIN defined but not running: starting it"
  else
    local xml="$STATE/$DOMAIN.xml"
    # No disk, no NIC: SeaBIOS shows "No bootable device" on a real VGA screen, which is
    # all a console demo needs. type='qemu' (TCG): boots faster than nested KVM here.
    cat >"$xml" <<EOF
<domain type='qemu'>
  <name>$DOMAIN</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <video><model type='vga'/></video>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
EOF
    virsh -q -c "$URI" define "$xml" >/dev/null
    log "defined $DOMAIN (64 MiB, 1 vCPU, VGA, VNC on 127.0.0.1; XML in $xml)"
  fi
  virsh -q -c "$URI" start "$DOMAIN" >/dev/null
  log "started $DOMAIN (VNC: $(virsh -c "$URI" domdisplay "$DOMAIN" 2>/dev/null || echo '?'))"
}

start_broker() {
  local pid; pid=$(our_broker)
  if [ -n "$pid" ]; then
    log "broker already running (pid $pid, log $LOGFILE)"
  elif healthy; then
    log "a broker not started by this script already answers on $BASE; using it"
    return
  else
    [ -x "$ROOT/.venv/bin/broker" ] || die "$ROOT/.venv/bin/broker missing (contrib/setup.sh failed?)"
    : >"$LOGFILE"
    # setsid: its own session, so it survives the terminal this script ran in.
    setsid "$ROOT/.venv/bin/broker" serve --listen "$LISTEN" >>"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
    log "started broker serve --listen $LISTEN (pid $pid, log $LOGFILE)"
  fi
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  until healthy; do
    if ! alive "$pid" || [ "$SECONDS" -ge "$deadline" ]; then
      log "last lines of $LOGFILE:" >&2
      tail -n 30 "$LOGFILE" >&2 || true
      if alive "$pid"; then die "$BASE/healthz did not answer within ${HEALTH_TIMEOUT} s"; fi
      die "the broker exited (pid $pid)"
    fi
    sleep 0.25
  done
  log "$BASE/healthz answers"
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (qemu:///system, /var/lib/vm-console-broker)"
  bash "$CONTRIB/setup.sh"
  bash "$CONTRIB/libvirt-up.sh" up
  mkdir -p "$STATE"
  start_domain
  start_broker
  local url
  # No --server: the CLI finds the local broker through its socket in the state dir, the
  # only way it sends the key it reads there.
  url=$("$ROOT/.venv/bin/broker" token "$DOMAIN" --ttl 600) \
    || die "broker token $DOMAIN failed (broker log: $LOGFILE)"
  cat <<EOF

Open this console link in a browser within 10 minutes (it works once):

    $url

If the broker runs on another machine, tunnel to it first and then open the link locally:

    ssh -L $PORT:127.0.0.1:$PORT host

Stop the demo with: bash contrib/demo.sh stop
EOF
}

stop() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local pid; pid=$(our_broker)
  if [ -n "$pid" ]; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 10))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then
      log "broker (pid $pid) still running 10 s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped the broker (pid $pid)"
  else
    log "no broker started by this script is running"
  fi
  rm -f "$PIDFILE"
  if virsh -c "$URI" dominfo "$DOMAIN" >/dev/null 2>&1; then
    virsh -q -c "$URI" destroy "$DOMAIN" >/dev/null 2>&1 || true   # fails if shut off: fine
    virsh -q -c "$URI" undefine "$DOMAIN" >/dev/null 2>&1 || true
    log "destroyed + undefined $DOMAIN"
  else
    log "$DOMAIN not defined"
  fi
  bash "$CONTRIB/libvirt-up.sh" down
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
