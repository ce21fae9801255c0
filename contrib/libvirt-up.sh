#!/usr/bin/env bash
# libvirt-up.sh - run a real libvirtd + QEMU (VNC consoles) for vm-console-broker on a
# Debian 12 machine without systemd, as root.
#
# Usage:
#   contrib/libvirt-up.sh up       install the packages if missing, configure QEMU, start
#                                  libvirtd under tini; idempotent: a libvirtd this script
#                                  started, or any other one answering on qemu:///system,
#                                  is reused
#   contrib/libvirt-up.sh down     destroy + undefine the domains named broker-test-* and
#                                  broker-demo-*, then stop the libvirtd this script started
#   contrib/libvirt-up.sh status   say what runs and list the domains (exit 3 if libvirt
#                                  does not answer)
#
# Environment:
#   BROKER_LIBVIRT_STATE   pid files and logs (default /var/lib/vm-console-broker/libvirtd)
#
# Every process it starts is tracked by PID in $BROKER_LIBVIRT_STATE and stopped by that
# PID only; nothing is ever stopped by name, and a libvirtd it did not start is left alone.
set -euo pipefail

STATE="${BROKER_LIBVIRT_STATE:-/var/lib/vm-console-broker/libvirtd}"
URI="qemu:///system"
PKGS=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients
      libvirt-dev pkg-config tini)
MARK="# managed by vm-console-broker contrib/libvirt-up.sh"
# Domains that `down` may destroy: the test suite's and the demo's, nothing else.
OURS='^broker-(test|demo)-'
CONNECT_TIMEOUT=60   # seconds; the first connection after install probes QEMU (~8 s)

log() { printf '[libvirt-up] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# A live, non-zombie process.
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }
# The PID in $STATE/tini.pid, if that process is alive and still our tini (not a reused PID).
our_tini() {
  local pid; pid=$(read_pid "$STATE/tini.pid")
  if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tini.*libvirtd'; then
    echo "$pid"
  fi
}
answers() { virsh -c "$URI" version >/dev/null 2>&1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (qemu:///system)"; }

install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      continue
    fi
    missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "packages already present: ${PKGS[*]}"
    return
  fi
  local t0; t0=$(now)
  export DEBIAN_FRONTEND=noninteractive
  # Wait (up to 10 min) for another apt/dpkg run instead of failing on its lock.
  local lock=(-o DPkg::Lock::Timeout=600)
  log "installing ${missing[*]} (apt-get update first)"
  apt-get "${lock[@]}" update -qq >"$STATE/apt.log" 2>&1 \
    || { tail -20 "$STATE/apt.log"; die "apt-get update failed (log: $STATE/apt.log)"; }
  # --no-install-recommends skips lvm2, the lxc/xen/vbox drivers, qemu-utils, ovmf, swtpm...
  # none of which a VNC console needs.
  apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1 \
    || { tail -20 "$STATE/apt.log"; die "apt-get install failed (log: $STATE/apt.log)"; }
  log "installed ${missing[*]} in $(since "$t0") s"
}

configure() {
  # libvirtd resolves its compiled-in QEMU user (libvirt-qemu) while creating the driver
  # config, BEFORE it reads qemu.conf; without that user the QEMU driver fails to load:
  # "Failed to parse user 'libvirt-qemu'" (libvirt-daemon-system would create it).
  local g
  for g in kvm libvirt-qemu; do
    if getent group "$g" >/dev/null; then continue; fi
    groupadd -r "$g"; log "created group $g"
  done
  if ! getent passwd libvirt-qemu >/dev/null; then
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -M -s /usr/sbin/nologin libvirt-qemu
    log "created system user libvirt-qemu"
  fi
  install -d -m 0755 /etc/libvirt /var/lib/libvirt /var/cache/libvirt
  install -d -m 0700 /var/log/libvirt/qemu

  local conf=/etc/libvirt/qemu.conf want
  want=$(cat <<EOF
$MARK
# QEMU runs as root: /dev/kvm is root-only here (no udev rule hands it to group kvm).
user = "root"
group = "root"
# No AppArmor/SELinux here.
security_driver = "none"
# Leave the machine's cgroups alone (no systemd); a harmless warning repeats in the log.
cgroup_controllers = [ ]
# QEMU writes /var/log/libvirt/qemu/NAME.log itself; the default "logd" needs virtlogd
# ("Failed to connect socket to '/run/libvirt/virtlogd-sock'" on every start).
stdio_handler = "file"
# Default VNC listen address and the autoport range.
vnc_listen = "127.0.0.1"
remote_display_port_min = 5900
remote_display_port_max = 5999
EOF
)
  if [ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ]; then
    log "$conf already configured"
    return
  fi
  # A qemu.conf that no libvirt-up script wrote (e.g. the package's commented default) is kept.
  if [ -f "$conf" ] && ! grep -q '^# managed by .*libvirt-up.sh' "$conf"; then
    cp -n "$conf" "$conf.orig-broker"
    log "kept the previous $conf as $conf.orig-broker"
  fi
  printf '%s\n' "$want" >"$conf"
  log "wrote $conf (takes effect when libvirtd starts)"
}

# Wait until qemu:///system answers; give up after $CONNECT_TIMEOUT s or when PID $1 dies.
wait_for_libvirt() {
  local watch="${1:-}" deadline=$((SECONDS + CONNECT_TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    answers && return 0
    if [ -n "$watch" ] && ! alive "$watch"; then return 1; fi
    sleep 0.2
  done
  return 1
}

start_daemon() {
  local tpid; tpid=$(our_tini)
  if [ -n "$tpid" ]; then
    wait_for_libvirt "$tpid" || die "libvirtd (tini pid $tpid) runs but does not answer on $URI"
    log "libvirtd already running (started by this script: tini pid $tpid, libvirtd pid $(read_pid "$STATE/libvirtd.pid"))"
    return
  fi
  if answers; then
    log "a libvirtd not started by this script already answers on $URI (pid(s) $(pgrep -x libvirtd | xargs || echo '?')); using it"
    return
  fi
  if pgrep -x libvirtd >/dev/null; then
    # Someone else's libvirtd that is still starting (capability probing): give it time.
    log "a libvirtd not started by this script is running but not answering yet; waiting up to ${CONNECT_TIMEOUT} s"
    wait_for_libvirt || die "the running libvirtd (pid(s) $(pgrep -x libvirtd | xargs)) does not answer on $URI; stop it first"
    log "it answers now; using it"
    return
  fi

  local t0; t0=$(now)
  rm -f "$STATE/tini.pid" "$STATE/libvirtd.pid"
  # libvirtd in the foreground under `tini -s` (child subreaper): libvirt double-forks QEMU,
  # which would otherwise be re-parented to PID 1 that reaps slowly here (every destroy
  # took 1.4-2 s instead of ~0.2 s). Never combine `libvirtd -d` with tini.
  LIBVIRT_LOG_OUTPUTS="3:file:$STATE/libvirtd.log" \
    setsid tini -s -- libvirtd -p "$STATE/libvirtd.pid" >>"$STATE/libvirtd.out" 2>&1 </dev/null &
  tpid=$!
  echo "$tpid" >"$STATE/tini.pid"
  log "started libvirtd under tini (pid $tpid); waiting up to ${CONNECT_TIMEOUT} s for $URI"
  if ! wait_for_libvirt "$tpid"; then
    tail -n 20 "$STATE/libvirtd.log" "$STATE/libvirtd.out" 2>/dev/null || true
    die "libvirtd did not answer on $URI (logs in $STATE)"
  fi
  log "libvirtd up in $(since "$t0") s: tini pid $tpid, libvirtd pid $(read_pid "$STATE/libvirtd.pid"), log $STATE/libvirtd.log"
}

report() {
  virsh -c "$URI" version 2>/dev/null | sed -n '/./s/^/    /p'
  if virsh -c "$URI" domcapabilities --virttype kvm >/dev/null 2>&1; then
    log "KVM offered; the tests still use <domain type='qemu'> (TCG boots faster than nested KVM)"
  else
    log "KVM not offered: use <domain type='qemu'> (TCG)"
  fi
}

up() {
  need_root
  mkdir -p "$STATE"
  install_packages
  configure
  start_daemon
  report
}

down() {
  need_root
  mkdir -p "$STATE"
  local d n=0
  if answers; then
    for d in $(virsh -c "$URI" list --all --name | grep -E "$OURS" || true); do
      virsh -q -c "$URI" destroy "$d" >/dev/null 2>&1 || true    # fails if shut off: fine
      virsh -q -c "$URI" undefine "$d" >/dev/null 2>&1 || true   # fails for transient ones: fine
      log "destroyed + undefined $d"
      n=$((n + 1))
    done
    [ "$n" -gt 0 ] || log "no broker-test-*/broker-demo-* domains"
    local others; others=$(virsh -c "$URI" list --name | grep . | xargs || true)
    [ -z "$others" ] || log "other domains still running (left alone; they outlive libvirtd): $others"
  else
    log "libvirt does not answer on $URI; no domains to clean up"
  fi

  local tpid lpid; tpid=$(our_tini); lpid=$(read_pid "$STATE/libvirtd.pid")
  if [ -z "$tpid" ]; then
    if answers; then
      log "libvirtd was not started by this script (no live pid in $STATE/tini.pid): left running"
    else
      log "libvirtd not running"
    fi
    rm -f "$STATE/tini.pid" "$STATE/libvirtd.pid"
    return
  fi
  kill -TERM "$tpid"          # tini forwards SIGTERM to libvirtd, which exits in ~1-2 s
  local deadline=$((SECONDS + 15))
  while alive "$tpid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if alive "$tpid"; then
    log "libvirtd did not exit within 15 s after SIGTERM; sending SIGKILL"
    if alive "$lpid"; then kill -KILL "$lpid" 2>/dev/null || true; fi
    kill -KILL "$tpid" 2>/dev/null || true
  fi
  rm -f "$STATE/tini.pid" "$STATE/libvirtd.pid"
  log "libvirtd stopped (tini pid $tpid, libvirtd pid ${lpid:-?})"
}

status() {
  local tpid; tpid=$(our_tini)
  if [ -n "$tpid" ]; then
    log "libvirtd running, started by this script: tini pid $tpid, libvirtd pid $(read_pid "$STATE/libvirtd.pid"), state $STATE"
  elif pgrep -x libvirtd >/dev/null; then
    log "libvirtd running, NOT started by this script: pid(s) $(pgrep -x libvirtd | xargs)"
  else
    log "libvirtd not running"
  fi
  if answers; then
    log "$URI answers; domains:"
    virsh -c "$URI" list --all
  else
    log "$URI does not answer"
    return 3
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
