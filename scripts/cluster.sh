# Shared by scripts/local-db.sh (the dev cluster), scripts/sandbox-emulator.sh (the TLS sandbox
# emulator), scripts/standby.sh, scripts/foreign-standby.sh, scripts/scratch-db.sh and
# scripts/pgbouncer.sh: messages, finding (or installing) Debian's PostgreSQL, the server user, the
# cluster's folder, initdb/start/stop, and the cluster's URL. Sourced, not run; the sourcing script
# sets `tag` (its name in messages), `cluster`, `port`, `db_user`, where it prints URLs `db_name`, and
# where it initialises clusters `after_initdb` (its own configuration of a new cluster).
#
# Layout: <dir>/data (PGDATA), <dir>/socket (the unix socket, folder mode 0700), <dir>/postgres.log,
# <dir>/password (the superuser's, mode 0600), where <dir> is .pgdata/<cluster> in the repo, or
# /var/tmp/livermore-db-<hash of the repo path>/<cluster> when the repo's path is not reachable by the
# unprivileged user that runs the server (e.g. a clone under /root). That fallback folder is created
# fresh (mode 0700, owned by the server user); one that already exists is used only if it is a real
# folder of that owner (not a link another user planted), and its mode is set to 0700. LOCAL_PG_BASE
# overrides it (tests).

say() { printf '%s: %s\n' "$tag" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$tag" "$*" >&2
  exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

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

# Installs Debian packages with apt-get, as root or through sudo.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: install $* (apt-get install $*) and retry"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_pg_bin() {
  if pg_bin=$(find_pg_bin); then return 0; fi
  say "PostgreSQL server binaries not found under /usr/lib/postgresql; installing Debian's 'postgresql' package"
  apt_install postgresql openssl
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
# fresh when missing; an existing one must be a real folder (not a link) owned by the server user.
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
  if [ "$mode" != 700 ]; then
    # Made by an older version of this script (mode 0755): the server user's own, so only tightened.
    say "tightening $base from mode $mode to 700"
    chmod 700 "$base"
  fi
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
  after_initdb
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

# The cluster's URL on stdout: the superuser, its password (<dir>/password), 127.0.0.1:$port, and
# database $db_name.
cluster_url() {
  local pw
  pw=$(cat "$dir/password" 2>/dev/null) || die "no password file in $dir (start the cluster: $0 up)"
  printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$db_user" "$pw" "$port" "$db_name"
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
