#!/usr/bin/env bash
# A streaming-replication standby of the dev cluster (scripts/local-db.sh), for the replica-routing
# tests and the benchmark: `pg_basebackup -R` of the running dev cluster into a folder of its own,
# started as a hot standby on 127.0.0.1:$LOCAL_STANDBY_PORT (default 54349). Roles (and so the
# password) are the dev cluster's: they are replicated.
#
#   scripts/standby.sh up       start the dev cluster and the standby (base backup first if needed);
#                               print the standby's URL (database $LOCAL_PG_DATABASE, default livermore)
#   scripts/standby.sh down     stop the standby
#   scripts/standby.sh stop     the same (the tests stop and restart it)
#   scripts/standby.sh rebuild  stop it, remove it, take a new base backup, start it
#
# The standby streams through a replication slot (livermore_standby): while it is stopped the dev
# cluster keeps the WAL it has not received (so it catches up on start). `rebuild` replaces the slot;
# a standby left stopped for good holds WAL on the dev cluster: `rebuild` or remove .pgdata/standby and
# drop the slot.
#
# Progress goes to stderr. A promoted standby (the tests promote it) is refused by the routing
# handle (it is no longer in recovery) until `rebuild`.
set -euo pipefail

cluster=standby
port=${LOCAL_STANDBY_PORT:-54349}
primary_port=${LOCAL_PG_PORT:-54329}
db_user=livermore
db_name=${LOCAL_PG_DATABASE:-livermore}
slot=livermore_standby

tag=standby

# shellcheck source=scripts/cluster.sh
. "$(dirname "$0")/cluster.sh"

base_backup() {
  local primary="$base/dev"
  claim_base
  [ -f "$dir/data/PG_VERSION" ] && return 0
  say "pg_basebackup of the dev cluster into $dir/data"
  as_server mkdir -p "$dir" "$dir/socket"
  as_server chmod 700 "$dir" "$dir/socket"
  as_server rm -rf "$dir/data"
  # A physical replication slot makes the primary keep the WAL the standby has not received, so a
  # standby stopped for a while (the tests stop it) catches up instead of finding its WAL recycled.
  # A slot left by an earlier standby is dropped first. The slot is made here, reserving WAL at once,
  # before the copy starts: made by pg_basebackup (-C) it is created by the WAL streamer after the
  # copy has begun, and under heavy writes (the tests running beside) the segment the copy starts in
  # was recycled in between ("requested WAL segment ... has already been removed", seen on a fresh
  # clone).
  as_server "$pg_bin/psql" -X -q -h "$primary/socket" -p "$primary_port" -U "$db_user" -d postgres \
    -c "SELECT pg_drop_replication_slot('$slot') FROM pg_replication_slots WHERE slot_name = '$slot'" \
    -c "SELECT pg_create_physical_replication_slot('$slot', true)" >/dev/null
  # Over the dev cluster's unix socket (trusted, the server user's alone); -R writes primary_conninfo,
  # primary_slot_name and standby.signal; -X stream carries the WAL written during the copy.
  as_server "$pg_bin/pg_basebackup" -h "$primary/socket" -p "$primary_port" -U "$db_user" \
    -D "$dir/data" -R -S "$slot" -X stream -c fast >"$dir/basebackup.log" 2>&1 ||
    { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
  as_server cp "$primary/password" "$dir/password"
  # The copy carries the primary's livermore.conf: the standby gets its own port and socket.
  as_server tee "$dir/data/livermore.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/socket'
max_connections = 300
shared_buffers = 128MB
log_timezone = 'UTC'
hot_standby = on
EOF
}

up() {
  if [ -n "${LIVERMORE_DATABASE_URL:-}" ]; then
    die "LIVERMORE_DATABASE_URL is set: the standby replicates the project-local cluster only"
  fi
  LOCAL_PG_DATABASE=postgres "$(dirname "$0")/local-db.sh" up >/dev/null
  ensure_pg_bin
  choose_server_user
  choose_dir
  base_backup
  start_cluster
  cluster_url
}

case "${1:-}" in
  up)
    up
    ;;
  down | stop)
    stop_cluster
    ;;
  rebuild)
    stop_cluster
    as_server rm -rf "$dir/data"
    up
    ;;
  *)
    die "usage: $0 up|down|stop|rebuild"
    ;;
esac
