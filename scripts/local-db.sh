#!/usr/bin/env bash
# A project-local PostgreSQL cluster for development and tests.
#
#   scripts/local-db.sh up      start it (initdb first if needed); print its URL on stdout
#   scripts/local-db.sh down    stop it
#   scripts/local-db.sh url     print its URL (does not start anything)
#   scripts/local-db.sh status  say whether it runs, and where its files are
#
# With DATABASE_URL set, `up` and `url` print that URL and touch nothing: the caller's database is used.
# Progress goes to stderr, so `url=$(scripts/local-db.sh up)` captures the URL alone.
#
# Layout: <dir>/data (PGDATA), <dir>/socket (the unix socket), <dir>/postgres.log, where <dir> is
# .pgdata/ in the repo, or /var/tmp/livermore-db-<hash of the repo path>/ when the repo's path is not
# reachable by the unprivileged user that runs the server (e.g. a clone under /root).
# The server listens on 127.0.0.1:$LOCAL_PG_PORT (default 54329) and trusts local connections:
# it is a throw-away development cluster, never a place for real data.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd -P)
port=${LOCAL_PG_PORT:-54329}
db_user=livermore
db_name=${LOCAL_PG_DATABASE:-livermore}

say() { printf 'local-db: %s\n' "$*" >&2; }
die() { printf 'local-db: error: %s\n' "$*" >&2; exit 1; }

local_url() { printf 'postgres://%s@127.0.0.1:%s/%s\n' "$db_user" "$port" "$db_name"; }

# Debian's PostgreSQL binaries, newest major version first; 15 is what the project is tested on.
find_pg_bin() {
  local d
  for d in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

ensure_pg_bin() {
  if pg_bin=$(find_pg_bin); then return 0; fi
  say "PostgreSQL server binaries not found under /usr/lib/postgresql; installing Debian's 'postgresql' package"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: install PostgreSQL 15 (apt-get install postgresql) and retry"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  pg_bin=$(find_pg_bin) || die "apt-get installed postgresql but no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
}

# Who runs the server: ourselves, or (as root, which PostgreSQL refuses) an unprivileged user.
choose_server_user() {
  if [ "$(id -u)" -ne 0 ]; then
    server_user=$(id -un)
    return
  fi
  if id postgres >/dev/null 2>&1; then
    server_user=postgres
  else
    server_user=livermore-pg
    id "$server_user" >/dev/null 2>&1 ||
      useradd --system --no-create-home --shell /usr/sbin/nologin "$server_user"
  fi
}

as_server() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$server_user" -- "$@"
  else
    "$@"
  fi
}

choose_dir() {
  dir="$repo/.pgdata"
  if [ "$(id -u)" -eq 0 ] && ! runuser -u "$server_user" -- test -x "$repo" 2>/dev/null; then
    local hash
    hash=$(printf '%s' "$repo" | sha256sum | cut -c1-12)
    dir="/var/tmp/livermore-db-$hash"
  fi
}

is_running() { as_server "$pg_bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }

init_cluster() {
  [ -f "$dir/data/PG_VERSION" ] && return 0
  say "initdb into $dir/data (server user $server_user)"
  mkdir -p "$dir"
  [ "$dir" = "$repo/.pgdata" ] || printf '%s\n' "$repo" >"$dir/REPO"
  if [ "$(id -u)" -eq 0 ]; then chown "$server_user" "$dir"; fi
  as_server mkdir -p "$dir/data" "$dir/socket"
  chmod 700 "$dir/data" 2>/dev/null || as_server chmod 700 "$dir/data"
  as_server "$pg_bin/initdb" -D "$dir/data" -U "$db_user" --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # Our settings go in a file of their own, included at the end so they win.
  as_server tee "$dir/data/livermore.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/socket'
max_connections = 300
shared_buffers = 256MB
log_timezone = 'UTC'
EOF
  echo "include 'livermore.conf'" | as_server tee -a "$dir/data/postgresql.conf" >/dev/null
}

start_cluster() {
  if is_running; then return 0; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is taken by another server; stop it or set LOCAL_PG_PORT"
  fi
  say "starting PostgreSQL ($("$pg_bin/postgres" --version)) on 127.0.0.1:$port"
  # The port is given on the command line as well so that LOCAL_PG_PORT can change between runs.
  as_server "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >/dev/null ||
    { tail -n 20 "$dir/postgres.log" >&2 || true; die "PostgreSQL did not start (log: $dir/postgres.log)"; }
}

cmd=${1:-}
case "$cmd" in
  up)
    if [ -n "${DATABASE_URL:-}" ]; then printf '%s\n' "$DATABASE_URL"; exit 0; fi
    ensure_pg_bin
    choose_server_user
    choose_dir
    init_cluster
    start_cluster
    local_url
    ;;
  down)
    pg_bin=$(find_pg_bin) || { say "no PostgreSQL binaries; nothing to stop"; exit 0; }
    choose_server_user
    choose_dir
    if [ -f "$dir/data/PG_VERSION" ] && is_running; then
      as_server "$pg_bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
      say "stopped ($dir)"
    else
      say "not running ($dir)"
    fi
    ;;
  url)
    if [ -n "${DATABASE_URL:-}" ]; then printf '%s\n' "$DATABASE_URL"; else local_url; fi
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
