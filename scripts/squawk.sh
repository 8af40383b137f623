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
[ "$status" -eq 0 ] && say "no findings in $dir (excluded files: .squawk.toml)"
exit "$status"
