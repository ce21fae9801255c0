#!/usr/bin/env bash
# fleet-cert.sh - certificates for a fleet of brokers behind one nginx front (README, "Running a fleet").
#
# Usage:
#   contrib/fleet-cert.sh ca     DIR                  the fleet CA: DIR/ca.key (keep it offline) and DIR/ca.crt
#   contrib/fleet-cert.sh host   DIR NAME [IP...]     a hypervisor's broker: DIR/NAME.crt + DIR/NAME.key,
#                                                     for TLS servers only, named NAME (its line in the
#                                                     front's map: `NAME ADDRESS:PORT;`) and its IPs
#   contrib/fleet-cert.sh client DIR NAME             a TLS client: the front (NAME=front), or a panel
#                                                     that mints on hosts directly
#
# Keys are ECDSA P-256, written with mode 0600 and never printed. Certificates are valid for
# FLEET_CERT_DAYS days (default 825; the CA 3650). A host certificate cannot be used as a
# client (extendedKeyUsage serverAuth only), so one hypervisor cannot pose as the front to
# another. Copy NAME.crt and NAME.key to the host (e.g. /etc/vm-console-broker/tls/), with
# ca.crt as its tls_client_ca, then start the broker or send it SIGHUP.
set -euo pipefail

die() { printf 'fleet-cert: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '3,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
kind=$1 dir=$2
shift 2
mkdir -p "$dir"
umask 077
days=${FLEET_CERT_DAYS:-825}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

valid_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] \
    || die "'$1' is not a usable name: letters, digits, '.', '_' and '-', as in the front's map and /h/NAME/"
}

issue() {  # name, extensions file
  local name=$1 ext=$2
  [ -f "$dir/ca.crt" ] && [ -f "$dir/ca.key" ] || die "no fleet CA in $dir: run '$0 ca $dir' first"
  [ ! -e "$dir/$name.crt" ] || die "$dir/$name.crt exists; remove it first to issue a new one"
  new_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null \
    || die "openssl could not sign $name's certificate"
  rm -f "$dir/$name.csr"
  chmod 644 "$dir/$name.crt"
  printf 'fleet-cert: %s/%s.crt and %s/%s.key (0600), valid %s days: %s\n' "$dir" "$name" "$dir" "$name" "$days" \
    "$(openssl x509 -in "$dir/$name.crt" -noout -ext subjectAltName,extendedKeyUsage 2>/dev/null | tr -s ' \n' ' ')"
}

case "$kind" in
  ca)
    [ ! -e "$dir/ca.crt" ] || die "$dir/ca.crt exists: a fleet has one CA (remove it to start over)"
    new_key "$dir/ca.key"
    openssl req -new -x509 -key "$dir/ca.key" -subj "/CN=vm-console-broker fleet CA" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$dir/ca.crt" 2>/dev/null || die "openssl could not make the CA"
    chmod 644 "$dir/ca.crt"
    printf 'fleet-cert: CA in %s/ca.crt; keep %s/ca.key (0600) off the hosts and the front\n' "$dir" "$dir"
    ;;
  host)
    [ $# -ge 1 ] || usage
    name=$1; shift
    valid_name "$name"
    san="DNS:$name"
    for ip in "$@"; do san+=",IP:$ip"; done
    ext="$dir/.ext.$$"
    trap 'rm -f "$ext"' EXIT
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=$san" >"$ext"
    issue "$name" "$ext"
    ;;
  client)
    [ $# -eq 1 ] || usage
    valid_name "$1"
    ext="$dir/.ext.$$"
    trap 'rm -f "$ext"' EXIT
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=clientAuth" >"$ext"
    issue "$1" "$ext"
    ;;
  *) usage ;;
esac
