#!/usr/bin/env bash
# The sandbox emulator: stands in for the managed Azure server in tests. A second local cluster on
# 127.0.0.1:$LOCAL_SANDBOX_PORT (default 54339) with TLS on (a CA and a server certificate for localhost
# and 127.0.0.1, made here with openssl), pg_hba allowing only `hostssl ... scram-sha-256` over TCP, a
# login role `sandbox_admin` (CREATEDB, not a superuser) whose password is read from
# SANDBOX_EMULATOR_PASSWORD at every `up` (never from a command line), and no `livermore` database
# until someone creates it.
#
#   scripts/sandbox-emulator.sh up     start it (initdb first if needed); print KEY=VALUE lines on stdout
#   scripts/sandbox-emulator.sh down   stop it
set -euo pipefail

cluster=sandbox
port=${LOCAL_SANDBOX_PORT:-54339}
db_user=livermore
sandbox_user=sandbox_admin

tag=sandbox-emulator

# shellcheck source=scripts/cluster.sh
. "$(dirname "$0")/cluster.sh"

# TLS with a CA of our own, and only TLS + SCRAM over TCP (the superuser keeps the unix socket, for setup).
after_initdb() {
  local tls="$dir/tls"
  command -v openssl >/dev/null || die "openssl is needed for the sandbox emulator's certificates (apt-get install openssl)"
  as_server mkdir -p "$tls"
  as_server openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=livermore-db sandbox emulator CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  as_server openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' | as_server tee "$tls/san.ext" >/dev/null
  as_server openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tls/san.ext" -out "$tls/server.crt" 2>/dev/null
  as_server chmod 600 "$tls/server.key" "$tls/ca.key"
  as_server chmod 644 "$tls/ca.crt"
  as_server tee -a "$dir/data/livermore.conf" >/dev/null <<EOF
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
password_encryption = 'scram-sha-256'
EOF
  as_server tee "$dir/data/pg_hba.conf" >/dev/null <<EOF
# The emulated sandbox: TCP only over TLS with SCRAM; the unix socket for the local superuser's setup.
local   all  $db_user  trust
hostssl all  all       127.0.0.1/32  scram-sha-256
hostssl all  all       ::1/128       scram-sha-256
EOF
}

# (Re)sets the sandbox login role's password from SANDBOX_EMULATOR_PASSWORD, fed to psql on stdin so
# that it never appears in a process list.
sandbox_role() {
  local pw=${SANDBOX_EMULATOR_PASSWORD:-}
  [ -n "$pw" ] || die "set SANDBOX_EMULATOR_PASSWORD (the emulated sandbox user's password)"
  local quoted=${pw//\'/\'\'}
  as_server "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/socket" -p "$port" -U "$db_user" -d postgres >/dev/null <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$sandbox_user') THEN
    CREATE ROLE $sandbox_user LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE $sandbox_user PASSWORD '$quoted';
EOF
}

case "${1:-}" in
  up)
    ensure_pg_bin
    choose_server_user
    choose_dir
    init_cluster
    as_server chmod 700 "$dir" "$dir/socket"
    start_cluster
    sandbox_role
    printf 'PG_SANDBOX_HOST=127.0.0.1\nPG_SANDBOX_PORT=%s\nPG_SANDBOX_USER=%s\nPG_SANDBOX_SSLROOTCERT=%s\n' \
      "$port" "$sandbox_user" "$dir/tls/ca.crt"
    ;;
  down)
    stop_cluster
    ;;
  *)
    die "usage: $0 up|down"
    ;;
esac
