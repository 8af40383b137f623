#!/usr/bin/env bash
# Project-local PostgreSQL clusters for development and tests.
#
#   scripts/local-db.sh up            start the dev cluster (initdb first if needed); print its URL on stdout
#   scripts/local-db.sh down          stop it
#   scripts/local-db.sh url           print its URL (does not start anything)
#   scripts/local-db.sh status        say whether it runs, and where its files are
#   scripts/local-db.sh sandbox-up    start the emulated sandbox (below); print KEY=VALUE lines on stdout
#   scripts/local-db.sh sandbox-down  stop it
#
# With LIVERMORE_DATABASE_URL set, `up` and `url` print that URL and touch nothing: the caller's database is used.
# Progress goes to stderr, so `url=$(scripts/local-db.sh up)` captures the URL alone.
#
# Layout: <dir>/data (PGDATA), <dir>/socket (the unix socket), <dir>/postgres.log, where <dir> is
# .pgdata/<cluster> in the repo, or /var/tmp/livermore-db-<hash of the repo path>/<cluster> when the
# repo's path is not reachable by the unprivileged user that runs the server (e.g. a clone under /root).
#
# The dev cluster listens on 127.0.0.1:$LOCAL_PG_PORT (default 54329). TCP connections need the
# superuser `livermore`'s password, generated per cluster and kept in <dir>/password (mode 0600, the
# server user's); `up` and `url` print it inside the URL. The unix socket sits in a folder of mode 0700,
# so only the server user (and root) reach it. A development cluster still: never a place for real data.
#
# As root, when the fallback folder /var/tmp/livermore-db-<hash> is used, it is created fresh (mode
# 0700, owned by the server user); one that already exists is used only if it is a real folder of
# that owner and mode (not a link another user planted). LOCAL_PG_BASE overrides the folder (tests).
#
# The sandbox emulator stands in for the managed Azure server in tests: a second cluster on
# 127.0.0.1:$LOCAL_SANDBOX_PORT (default 54339) with TLS on (a CA and a server certificate made here with
# openssl), pg_hba allowing only `hostssl ... scram-sha-256` over TCP, a login role `sandbox_admin`
# (CREATEDB, not a superuser) whose password is read from SANDBOX_EMULATOR_PASSWORD at every
# `sandbox-up` (never from a command line), and no `livermore` database until someone creates it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd -P)
cluster=dev
port=${LOCAL_PG_PORT:-54329}
db_user=livermore
db_name=${LOCAL_PG_DATABASE:-livermore}
sandbox_user=sandbox_admin

say() { printf 'local-db: %s\n' "$*" >&2; }
die() {
  printf 'local-db: error: %s\n' "$*" >&2
  exit 1
}

local_url() {
  local pw
  pw=$(cat "$dir/password" 2>/dev/null) || die "no password file in $dir (start the cluster: $0 up)"
  printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$db_user" "$pw" "$port" "$db_name"
}

# Debian's PostgreSQL binaries; 15 is what the project is tested on, else the newest installed.
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
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql openssl >&2
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
    # From / : the server user may not be allowed into the caller's folder (every path here is absolute).
    (cd / && runuser -u "$server_user" -- "$@")
  else
    "$@"
  fi
}

choose_dir() {
  base="$repo/.pgdata"
  fallback=false
  if [ -n "${LOCAL_PG_BASE:-}" ]; then
    base=$LOCAL_PG_BASE
    fallback=true
  elif [ "$(id -u)" -eq 0 ] && ! runuser -u "$server_user" -- test -x "$repo" 2>/dev/null; then
    local hash
    hash=$(printf '%s' "$repo" | sha256sum | cut -c1-12)
    base="/var/tmp/livermore-db-$hash"
    fallback=true
  fi
  dir="$base/$cluster"
}

# A folder outside the repository, in a place every local user can write to: it must be ours. Created
# fresh when missing; an existing one must be a real folder (not a link), owned by the server user,
# mode 0700, or nothing is written into it.
claim_base() {
  [ "$fallback" = true ] || return 0
  if [ -L "$base" ]; then
    die "$base is a symbolic link: refusing to use it (another local user may have planted it); remove it"
  fi
  if [ ! -e "$base" ]; then
    mkdir -m 700 "$base" || die "cannot create $base"
    if [ "$(id -u)" -eq 0 ]; then chown "$server_user" "$base"; fi
  fi
  [ -d "$base" ] || die "$base is not a folder: refusing to use it"
  local owner mode
  owner=$(stat -c %U "$base")
  mode=$(stat -c %a "$base")
  [ "$owner" = "$server_user" ] || die "$base belongs to $owner, not $server_user: refusing to use it; remove it"
  [ "$mode" = 700 ] || die "$base has mode $mode, not 700: refusing to use it; remove it"
}

is_running() { as_server "$pg_bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }

init_cluster() {
  claim_base
  [ -f "$dir/data/PG_VERSION" ] && return 0
  say "initdb into $dir/data (server user $server_user)"
  if [ "$fallback" = true ]; then
    as_server mkdir -p "$dir"
    printf '%s\n' "$repo" | as_server tee "$base/REPO" >/dev/null
  else
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown "$server_user" "$base" "$dir"; fi
  fi
  as_server mkdir -p "$dir/data" "$dir/socket"
  as_server chmod 700 "$dir" "$dir/data" "$dir/socket"
  new_password
  # TCP needs the password (SCRAM); the unix socket, in a folder only the server user can enter, trusts.
  as_server "$pg_bin/initdb" -D "$dir/data" -U "$db_user" --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$dir/password" -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # Our settings go in a file of their own, included last so that they win.
  as_server tee "$dir/data/livermore.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/socket'
max_connections = 300
shared_buffers = 256MB
log_timezone = 'UTC'
EOF
  echo "include 'livermore.conf'" | as_server tee -a "$dir/data/postgresql.conf" >/dev/null
  if [ "$cluster" = sandbox ]; then configure_sandbox; fi
}

# TLS with a CA of our own, and only TLS + SCRAM over TCP (the superuser keeps the unix socket, for setup).
configure_sandbox() {
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

# A random password for the superuser, in a file only the server user can read (root can too).
new_password() {
  as_server bash -c 'umask 077; head -c 48 /dev/urandom | base64 | tr -dc A-Za-z0-9 | head -c 32 >"$1"' _ "$dir/password"
}

# Clusters made before passwords: give the superuser one and make TCP connections ask for it.
secure_old_cluster() {
  [ -f "$dir/password" ] && return 0
  say "securing an older cluster: a password for TCP connections, socket folder 0700"
  new_password
  as_server chmod 700 "$dir" "$dir/socket"
  local pw
  pw=$(cat "$dir/password")
  printf "SET password_encryption = 'scram-sha-256';\nALTER ROLE %s PASSWORD '%s';\n" "$db_user" "$pw" |
    as_server "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/socket" -p "$port" -U "$db_user" -d postgres >/dev/null
  as_server sed -i -E 's/^(host[a-z]*[[:space:]].*[[:space:]])trust[[:space:]]*$/\1scram-sha-256/' "$dir/data/pg_hba.conf"
  as_server "$pg_bin/pg_ctl" -D "$dir/data" reload >/dev/null
}

start_cluster() {
  if is_running; then return 0; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is taken by another server; stop it or choose another port (LOCAL_PG_PORT, LOCAL_SANDBOX_PORT)"
  fi
  say "starting PostgreSQL $cluster cluster ($("$pg_bin/postgres" --version)) on 127.0.0.1:$port"
  # The port is given on the command line as well so that it may change between runs.
  as_server "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >/dev/null ||
    { tail -n 20 "$dir/postgres.log" >&2 || true; die "PostgreSQL did not start (log: $dir/postgres.log)"; }
}

stop_cluster() {
  pg_bin=$(find_pg_bin) || { say "no PostgreSQL binaries; nothing to stop"; return 0; }
  choose_server_user
  choose_dir
  if [ -f "$dir/data/PG_VERSION" ] && is_running; then
    as_server "$pg_bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    say "stopped ($dir)"
  else
    say "not running ($dir)"
  fi
}

cmd=${1:-}
case "$cmd" in
  sandbox-*)
    cluster=sandbox
    port=${LOCAL_SANDBOX_PORT:-54339}
    ;;
esac
case "$cmd" in
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
    local_url
    ;;
  sandbox-up)
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
  down | sandbox-down)
    stop_cluster
    ;;
  url)
    if [ -n "${LIVERMORE_DATABASE_URL:-}" ]; then
      printf '%s\n' "$LIVERMORE_DATABASE_URL"
    else
      pg_bin=$(find_pg_bin) || die "no PostgreSQL binaries under /usr/lib/postgresql"
      choose_server_user
      choose_dir
      local_url
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
    die "usage: $0 up|down|url|status|sandbox-up|sandbox-down"
    ;;
esac
