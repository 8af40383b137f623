#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests that stop or restart their server (tests/it/restart.rs),
# which must not touch the dev cluster every other test shares. Same setup as the dev cluster
# (scripts/cluster.sh) on 127.0.0.1:$LOCAL_SCRATCH_PORT (default 54379).
#
#   scripts/scratch-db.sh up        start it (initdb first if needed); print its URL on stdout
#   scripts/scratch-db.sh restart   pg_ctl restart -m fast (as an operator restarting the server would)
#   scripts/scratch-db.sh down      stop it
set -euo pipefail

cluster=scratch
port=${LOCAL_SCRATCH_PORT:-54379}
db_user=livermore
tag=scratch-db

# shellcheck source=scripts/cluster.sh
. "$(dirname "$0")/cluster.sh"

after_initdb() { :; }

case "${1:-}" in
  up)
    ensure_pg_bin
    choose_server_user
    choose_dir
    init_cluster
    start_cluster
    printf 'postgres://%s:%s@127.0.0.1:%s/postgres\n' "$db_user" "$(cat "$dir/password")" "$port"
    ;;
  restart)
    pg_bin=$(find_pg_bin) || die "no PostgreSQL binaries under /usr/lib/postgresql"
    choose_server_user
    choose_dir
    as_server "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $port" -m fast -w -t 60 restart >/dev/null ||
      { tail -n 20 "$dir/postgres.log" >&2 || true; die "PostgreSQL did not restart (log: $dir/postgres.log)"; }
    ;;
  down)
    stop_cluster
    ;;
  *)
    die "usage: $0 up|restart|down"
    ;;
esac
