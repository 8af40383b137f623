#!/usr/bin/env bash
# PgBouncer in front of the dev cluster (scripts/local-db.sh), for the tests that find out whether the
# crate works behind a connection pooler: Debian's `pgbouncer` package (installed with apt-get when
# missing), one instance per pool mode, in .pgdata/pgbouncer-<mode>/, run as the server user.
#
#   scripts/pgbouncer.sh up MODE      start it (MODE: transaction or session); print KEY=VALUE lines:
#                                     PGBOUNCER_URL (database livermore; any database name is passed
#                                     through), PGBOUNCER_VERSION
#   scripts/pgbouncer.sh down         stop every instance
#
# Clients authenticate to PgBouncer with SCRAM as `livermore` (the dev cluster's password, in an
# auth_file of mode 0600); PgBouncer logs in to the server the same way. Two server connections per
# database and user (default_pool_size = 2), so that many clients share few server connections, as in
# production. With PgBouncer 1.21 or newer, `max_prepared_statements = 200` is set (it carries
# protocol-level prepared statements across server connections); older versions have no such setting.
set -euo pipefail

cluster=pgbouncer
db_user=livermore

tag=pgbouncer

# shellcheck source=scripts/cluster.sh
. "$(dirname "$0")/cluster.sh"

ensure_pgbouncer() {
  command -v pgbouncer >/dev/null && return 0
  [ -x /usr/sbin/pgbouncer ] && return 0
  say "pgbouncer not found; installing Debian's 'pgbouncer' package (its own service, port 6432, is not used)"
  apt_install pgbouncer
}

pgbouncer_bin() {
  command -v pgbouncer 2>/dev/null || printf '/usr/sbin/pgbouncer\n'
}

version_of() {
  "$(pgbouncer_bin)" --version | head -n1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1
}

# 1 when $1 >= $2 (dotted versions).
at_least() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]; }

up() {
  local mode=$1 port
  case "$mode" in
    transaction) port=${LOCAL_PGBOUNCER_TX_PORT:-54359} ;;
    session) port=${LOCAL_PGBOUNCER_SESSION_PORT:-54369} ;;
    *) die "usage: $0 up transaction|session" ;;
  esac
  # One `up` at a time: tests start the same instance concurrently (a second one would find the
  # first's pid file, or a config file half written). The servers started here must not inherit
  # the lock's descriptor (9<&-), or they would hold it for their lives.
  exec 9<"$0"
  flock 9
  LOCAL_PG_DATABASE=postgres "$(dirname "$0")/local-db.sh" up >/dev/null 9<&-
  ensure_pgbouncer
  ensure_pg_bin
  choose_server_user
  cluster="pgbouncer-$mode"
  choose_dir
  claim_base
  local primary="$base/dev" version extra=""
  version=$(version_of)
  if at_least "$version" 1.21; then extra="max_prepared_statements = 200"; fi
  as_server mkdir -p "$dir"
  as_server chmod 700 "$dir"
  local pw
  pw=$(cat "$primary/password")
  # The password goes to a file, never to a command line.
  printf '"%s" "%s"\n' "$db_user" "$pw" | as_server bash -c 'umask 077; cat >"$1"' _ "$dir/userlist.txt"
  as_server tee "$dir/pgbouncer.ini" >/dev/null <<EOF
[databases]
* = host=127.0.0.1 port=${LOCAL_PG_PORT:-54329}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = $mode
# Before a server connection passes to the next client (session mode), drop that client's prepared
# statements and session state: PgBouncer's default, set here because the crate depends on it (sqlx
# names its statements sqlx_s_1, sqlx_s_2, ... on every connection).
server_reset_query = DISCARD ALL
default_pool_size = 2
# Idle server connections close soon, so that a test database can be dropped even after a test that
# failed before releasing them.
server_idle_timeout = 5
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
$extra
EOF
  if ! { [ -f "$dir/pgbouncer.pid" ] && as_server kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; }; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port on 127.0.0.1 is taken by another server"
    fi
    say "starting PgBouncer $version ($mode mode) on 127.0.0.1:$port"
    as_server "$(pgbouncer_bin)" -d "$dir/pgbouncer.ini" 9<&- ||
      { tail -n 20 "$dir/pgbouncer.log" >&2 || true; die "PgBouncer did not start"; }
    local i
    for i in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.1
    done
  fi
  printf 'PGBOUNCER_URL=postgres://%s:%s@127.0.0.1:%s/livermore\n' "$db_user" "$pw" "$port"
  printf 'PGBOUNCER_VERSION=%s\n' "$version"
}

down() {
  pg_bin=$(find_pg_bin) || return 0
  choose_server_user
  local mode
  for mode in transaction session; do
    cluster="pgbouncer-$mode"
    choose_dir
    if [ -f "$dir/pgbouncer.pid" ] && as_server kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; then
      as_server kill "$(cat "$dir/pgbouncer.pid")"
      say "stopped ($mode)"
    fi
  done
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  *) die "usage: $0 up transaction|session | down" ;;
esac
