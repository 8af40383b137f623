#!/usr/bin/env bash
# The project-local PostgreSQL cluster for development and tests (the sandbox emulator the tests
# also start is scripts/sandbox-emulator.sh; what both share is scripts/cluster.sh).
#
#   scripts/local-db.sh up            start the dev cluster (initdb first if needed); print its URL on stdout
#   scripts/local-db.sh down          stop it
#   scripts/local-db.sh url           print its URL (does not start anything)
#   scripts/local-db.sh status        say whether it runs, and where its files are
#
# With LIVERMORE_DATABASE_URL set, `up` and `url` print that URL and touch nothing: the caller's database is used.
# Progress goes to stderr, so `url=$(scripts/local-db.sh up)` captures the URL alone.
#
# The dev cluster listens on 127.0.0.1:$LOCAL_PG_PORT (default 54329). TCP connections need the
# superuser `livermore`'s password, generated per cluster and kept in <dir>/password (mode 0600, the
# server user's); `up` and `url` print it inside the URL. The unix socket sits in a folder of mode 0700,
# so only the server user (and root) reach it. A development cluster still: never a place for real data.
#
set -euo pipefail

cluster=dev
port=${LOCAL_PG_PORT:-54329}
db_user=livermore
db_name=${LOCAL_PG_DATABASE:-livermore}

tag=local-db

# shellcheck source=scripts/cluster.sh
. "$(dirname "$0")/cluster.sh"

after_initdb() { :; }

case "${1:-}" in
  up)
    if [ -n "${LIVERMORE_DATABASE_URL:-}" ]; then
      printf '%s\n' "$LIVERMORE_DATABASE_URL"
      exit 0
    fi
    ensure_pg_bin
    choose_server_user
    choose_dir
    init_cluster
    start_cluster
    secure_old_cluster
    cluster_url
    ;;
  down)
    stop_cluster
    ;;
  url)
    if [ -n "${LIVERMORE_DATABASE_URL:-}" ]; then
      printf '%s\n' "$LIVERMORE_DATABASE_URL"
    else
      pg_bin=$(find_pg_bin) || die "no PostgreSQL binaries under /usr/lib/postgresql"
      choose_server_user
      choose_dir
      cluster_url
    fi
    ;;
  status)
    pg_bin=$(find_pg_bin) || die "no PostgreSQL binaries under /usr/lib/postgresql"
    choose_server_user
    choose_dir
    if [ -f "$dir/data/PG_VERSION" ] && is_running; then
      say "running on 127.0.0.1:$port, files in $dir"
    else
      say "not running; files in $dir"
      exit 3
    fi
    ;;
  *)
    die "usage: $0 up|down|url|status"
    ;;
esac
