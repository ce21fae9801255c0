#!/usr/bin/env bash
# tiny-guest.sh - build a tiny Linux guest that proves keystrokes arrive through a console.
#
# Usage:
#   contrib/tiny-guest.sh OUTDIR
#
# Writes OUTDIR/vmlinuz (Debian's amd64 kernel) and OUTDIR/initrd.gz (busybox + an /init).
# Cached: does nothing when both files exist already and the initrd is of this script's
# INIT_VERSION (OUTDIR/init-version); an older initrd is rebuilt. Nothing is installed: the two .deb
# packages are fetched with `apt-get download` into a temporary directory and unpacked there.
#
# The guest's /init mounts proc, sys and devtmpfs, prints the line TINY-GUEST-READY to
# /dev/ttyS0, starts a shell on /dev/ttyS0 (prompt "tiny# ", for serial-console tests), then
# reads lines typed on the VGA console (/dev/tty0, i.e. keys sent through VNC) and writes
# each one to /dev/ttyS0 as "GOT: <line>". Boot it with
#   <os><type arch='x86_64' machine='pc'>hvm</type>
#       <kernel>OUTDIR/vmlinuz</kernel><initrd>OUTDIR/initrd.gz</initrd>
#       <cmdline>console=ttyS0 quiet</cmdline></os>
# in a <domain type='qemu'> with 256 MiB and a <serial type='pty'> with a <log file=…/> to
# talk to ttyS0 and read what it printed (init ~10 s).
set -euo pipefail

log() { printf '[tiny-guest] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

INIT_VERSION=3  # 2: a shell on ttyS0; 3: ttyS0 its controlling terminal (Ctrl-C works)
[ $# -eq 1 ] || { sed -n '2,22p' "$0" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] && [ "$(cat "$OUT/init-version" 2>/dev/null)" = "$INIT_VERSION" ]; then
  log "already built: $OUT/vmlinuz and $OUT/initrd.gz (delete them to rebuild)"
  exit 0
fi
command -v python3 >/dev/null || die "python3 is needed to write the initramfs"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
T0=$SECONDS

# -- the packages ------------------------------------------------------------------------

# The kernel package that the linux-image-amd64 metapackage currently depends on.
kernel_package() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances linux-image-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}
KPKG=$(kernel_package)
if [ -z "$KPKG" ]; then
  log "apt does not know linux-image-amd64 yet: apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  KPKG=$(kernel_package)
fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package that linux-image-amd64 depends on"
KVER=$(apt-cache show "$KPKG" | awk '/^Version:/ { print $2; exit }')

log "downloading $KPKG ($KVER) and busybox-static"
# APT::Sandbox::User=root: as root, apt would otherwise warn that _apt cannot write here.
(cd "$TMP" && apt-get -q -o APT::Sandbox::User=root download "$KPKG" busybox-static >/dev/null) \
  || die "apt-get download $KPKG busybox-static failed"

mkdir -p "$TMP/x"
# Like `dpkg -x`, but only the files needed: the kernel package is mostly modules (~400 MB).
dpkg-deb --fsys-tarfile "$TMP/${KPKG}"_*.deb | tar -x -C "$TMP/x" --wildcards './boot/vmlinuz-*'
dpkg-deb --fsys-tarfile "$TMP"/busybox-static_*.deb | tar -x -C "$TMP/x" ./bin/busybox
VMLINUZ=$(find "$TMP/x/boot" -name 'vmlinuz-*' | head -n 1)
[ -n "$VMLINUZ" ] || die "no boot/vmlinuz-* in $KPKG"
log "kernel $(basename "$VMLINUZ"), $(du -h "$VMLINUZ" | cut -f1)"

# -- the initramfs -----------------------------------------------------------------------

ROOTFS="$TMP/rootfs"
mkdir -p "$ROOTFS/bin" "$ROOTFS/dev" "$ROOTFS/proc" "$ROOTFS/sys"
install -m 0755 "$TMP/x/bin/busybox" "$ROOTFS/bin/busybox"
cat >"$ROOTFS/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Open the VGA console first, so no key typed after the ready line can be lost.
exec 3</dev/tty0
echo TINY-GUEST-READY >/dev/ttyS0
# A shell on the serial line, restarted if it exits (a serial-console test may type `exit`).
(while true; do PS1='tiny# ' setsid -c sh -i </dev/ttyS0 >/dev/ttyS0 2>&1; done) &
while true; do
  while IFS= read -r line <&3; do
    echo "GOT: $line" >/dev/ttyS0
  done
  sleep 1
done
EOF
chmod 0755 "$ROOTFS/init"

# newc cpio + gzip, written by Python: no `cpio` package and no mknod needed. It adds
# /dev/console (char 5:1) so the kernel can open an initial console before devtmpfs.
python3 - "$ROOTFS" "$TMP/initrd.gz" <<'EOF'
import gzip, os, stat, sys

root, target = sys.argv[1], sys.argv[2]
entries = []  # (name, mode, data, rdevmajor, rdevminor)
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    rel = os.path.relpath(dirpath, root)
    if rel != ".":
        entries.append((rel, stat.S_IFDIR | 0o755, b"", 0, 0))
    for name in sorted(filenames):
        path = os.path.join(dirpath, name)
        mode = stat.S_IFREG | (os.stat(path).st_mode & 0o7777)
        with open(path, "rb") as fh:
            entries.append((os.path.normpath(os.path.join(rel, name)), mode, fh.read(), 0, 0))
entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1))

def pad(n):
    return b"\0" * (-n % 4)

with gzip.GzipFile(target, "wb", mtime=0) as out:
    for ino, (name, mode, data, major, minor) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + encoded + pad(len(header) + len(encoded)))
        out.write(data + pad(len(data)))
EOF

# -- into place ----------------------------------------------------------------------------

install -m 0644 "$VMLINUZ" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
install -m 0644 "$TMP/initrd.gz" "$OUT/initrd.gz.tmp" && mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
echo "$KPKG $KVER $(basename "$VMLINUZ")" >"$OUT/kernel-version"
echo "$INIT_VERSION" >"$OUT/init-version"
log "built $OUT/vmlinuz ($(du -h "$OUT/vmlinuz" | cut -f1)) and $OUT/initrd.gz ($(du -h "$OUT/initrd.gz" | cut -f1)) in $((SECONDS - T0)) s"
