#!/usr/bin/env bash
# A server in recovery that belongs to another cluster (its own initdb, so another
# system_identifier), with a WAL position far past the dev cluster's: what a replica URL pointed at
# the wrong cluster's standby looks like to the routing handle. For the replica-routing tests.
#
#   scripts/foreign-standby.sh up       a new cluster (the old one removed), running as a primary on
#                                       127.0.0.1:$LOCAL_FOREIGN_PORT (default 54389); print its URL
#                                       (database $LOCAL_PG_DATABASE, default livermore, created)
#   scripts/foreign-standby.sh recover  stop it, move its WAL far ahead (pg_resetwal -l), restart it
#                                       in recovery (standby.signal, no primary); print its URL
#   scripts/foreign-standby.sh down     stop it
#
# Progress goes to stderr.
set -euo pipefail

cluster=foreign
port=${LOCAL_FOREIGN_PORT:-54389}
db_user=livermore
db_name=${LOCAL_PG_DATABASE:-livermore}

tag=foreign-standby

# shellcheck source=scripts/cluster.sh
. "$(dirname "$0")/cluster.sh"

after_initdb() { :; }

prepare() {
  if [ -n "${LIVERMORE_DATABASE_URL:-}" ]; then
    die "LIVERMORE_DATABASE_URL is set: the foreign standby belongs beside the project-local cluster only"
  fi
  ensure_pg_bin
  choose_server_user
  choose_dir
}

case "${1:-}" in
  up)
    prepare
    if [ -f "$dir/data/PG_VERSION" ]; then
      is_running && as_server "$pg_bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
      as_server rm -rf "$dir/data"
    fi
    init_cluster
    start_cluster
    as_server "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/socket" -p "$port" -U "$db_user" \
      -d postgres -c "CREATE DATABASE \"$db_name\"" >/dev/null
    cluster_url
    ;;
  recover)
    prepare
    [ -f "$dir/data/PG_VERSION" ] || die "no cluster in $dir (run: $0 up)"
    is_running && as_server "$pg_bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    # WAL segment 0xFF/0x01 of timeline 1: position FF/1000000, far past any test's primary.
    as_server "$pg_bin/pg_resetwal" -l 00000001000000FF00000001 "$dir/data" >/dev/null
    # pg_resetwal leaves wal_level=minimal in the control file, which recovery refuses: one start as
    # a primary and a clean stop write a checkpoint at the configured level first.
    start_cluster
    as_server "$pg_bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    as_server touch "$dir/data/standby.signal"
    start_cluster
    cluster_url
    ;;
  down | stop)
    stop_cluster
    ;;
  *)
    die "usage: $0 up|recover|down"
    ;;
esac
