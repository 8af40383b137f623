#!/usr/bin/env bash
# squawk (the PostgreSQL migration linter), pinned, on the crate's migrations: what `make lint` runs.
#
#   scripts/squawk.sh [DIR]   lint every *.sql in DIR (default: migrations/) with .squawk.toml;
#                             exit status 1 when squawk reports anything
#
# squawk is installed on first use into a virtualenv of the project's cache
# (~/.cache/livermore-db/squawk-<version>, or $SQUAWK_ROOT), from scripts/squawk-requirements.txt
# (version and wheel hashes pinned): nothing global.
#
# sqlx runs each migration in a transaction unless its first line is `-- no-transaction`, so files
# with that marker are linted as running outside one (--no-assume-in-transaction) and the others as
# inside one (the config's assume_in_transaction).
set -euo pipefail

SQUAWK_VERSION=2.70.0
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${SQUAWK_ROOT:-$HOME/.cache/livermore-db/squawk-$SQUAWK_VERSION}
dir=${1:-$repo/migrations}

say() { printf 'squawk: %s\n' "$*" >&2; }

if [ "$("$root/bin/squawk" --version 2>/dev/null)" != "squawk $SQUAWK_VERSION" ]; then
  say "installing squawk $SQUAWK_VERSION into $root"
  # One install at a time (tests and make lint may start together).
  mkdir -p "$(dirname "$root")"
  exec 9>"$root.lock"
  flock 9
  if [ "$("$root/bin/squawk" --version 2>/dev/null)" != "squawk $SQUAWK_VERSION" ]; then
    rm -rf "$root"
    python3 -m venv "$root"
    "$root/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps \
      -r "$repo/scripts/squawk-requirements.txt" ||
      { rm -rf "$root"; say "could not install squawk $SQUAWK_VERSION"; exit 1; }
  fi
  exec 9>&-
fi

[ -d "$dir" ] || { say "no folder $dir"; exit 1; }
in_tx=() out_tx=()
for f in "$dir"/*.sql; do
  [ -e "$f" ] || continue
  if head -n1 "$f" | grep -qx -- '-- no-transaction'; then out_tx+=("$f"); else in_tx+=("$f"); fi
done
status=0
# PostgreSQL runs a string of several statements (which is how sqlx sends a file) in one implicit
# transaction block, so a statement that cannot run in one (CONCURRENTLY, VACUUM, CREATE DATABASE,
# ALTER SYSTEM) fails there with 25001 however squawk judged it: a `-- no-transaction` file holding
# one must hold nothing else. Counted as at most one `;` once `--` comments are removed (a `;` in a
# string counts too, so such a file is refused rather than guessed at).
for f in ${out_tx[@]+"${out_tx[@]}"}; do
  code=$(sed 's/--.*$//' "$f")
  grep -qiwE 'concurrently|vacuum|database|system' <<<"$code" || continue
  n=$(tr -cd ';' <<<"$code" | wc -c)
  if [ "$n" -gt 1 ]; then
    printf '%s:1:0: warning: one-statement-per-no-transaction-file %s statements beside a statement that cannot run in a transaction block: sqlx sends the file as one string, which PostgreSQL runs as one implicit transaction (25001 there). Give that statement a file of its own.\n' \
      "${f#"$repo"/}" "$n"
    status=1
  fi
done
cd "$repo"
# squawk says "Failed to find files for provided patterns" when every file given is excluded by the
# config: not a failure here (--no-error-on-unmatched-pattern), so not said.
quiet() { grep -v '^Failed to find files for provided patterns' >&2 || true; }
if [ ${#in_tx[@]} -gt 0 ]; then
  "$root/bin/squawk" --config "$repo/.squawk.toml" --no-error-on-unmatched-pattern --reporter gcc "${in_tx[@]}" 2> >(quiet) || status=1
fi
if [ ${#out_tx[@]} -gt 0 ]; then
  "$root/bin/squawk" --config "$repo/.squawk.toml" --no-assume-in-transaction --no-error-on-unmatched-pattern --reporter gcc \
    "${out_tx[@]}" 2> >(quiet) || status=1
fi
# What the DO blocks run, which squawk sees as one opaque statement: written out as plain statements
# by scripts/squawk-do.py and linted the same way; a finding there fails unless
# scripts/squawk-accepted.txt accepts it (file and rule, with why), and an accepted line that matches
# no finding fails too. The excluded files' blocks are linted as well.
do_dir=$(mktemp -d)
trap 'rm -rf "$do_dir"' EXIT
python3 "$repo/scripts/squawk-do.py" "$do_dir" "$dir"/*.sql || status=1
findings=$do_dir/findings
: >"$findings"
for f in "$do_dir"/*.do.sql; do
  [ -e "$f" ] || continue
  flags=()
  head -n1 "$f" | grep -qx -- '-- no-transaction' && flags=(--no-assume-in-transaction)
  # An empty config: the files are temporary (the config's excluded paths do not name them).
  (cd "$do_dir" && "$root/bin/squawk" --config "$repo/.squawk.toml" ${flags[@]+"${flags[@]}"} \
    --reporter gcc "$(basename "$f")" 2> >(quiet)) >>"$findings" || true
done
accepted=$(grep -v '^#' "$repo/scripts/squawk-accepted.txt" | awk 'NF { print $1, $2 }' | sort -u)
seen=$(sed -nE 's/^(.*)\.do\.sql:[0-9]+:[0-9]+: warning: ([a-z-]+) .*/\1 \2/p' "$findings" | sort -u)
while IFS= read -r line; do
  [ -n "$line" ] || continue
  key=$(sed -nE 's/^(.*)\.do\.sql:[0-9]+:[0-9]+: warning: ([a-z-]+) .*/\1 \2/p' <<<"$line")
  if ! grep -qxF -- "$key" <<<"$accepted"; then
    printf '%s (a statement of a DO block; scripts/squawk-do.py)\n' "${dir#"$repo"/}/${line/.do.sql:/ DO block, line of the extract }"
    status=1
  fi
done <"$findings"
while IFS= read -r key; do
  [ -n "$key" ] || continue
  [ -e "$dir/${key%% *}" ] || continue # a file of another folder
  if ! grep -qxF -- "$key" <<<"$seen"; then
    printf 'scripts/squawk-accepted.txt: "%s" accepts a finding squawk no longer reports: remove the line\n' "$key"
    status=1
  fi
done <<<"$accepted"
[ "$status" -eq 0 ] && say "no findings in $dir, its DO blocks included (excluded files: .squawk.toml; accepted: scripts/squawk-accepted.txt)"
exit "$status"
