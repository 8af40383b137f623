#!/usr/bin/env bash
# `make test` step: the Makefile hands user-given values to commands as data, never as code.
# Runs `make import-clerk` with file names that hold quotes, spaces, `$(…)`, backquotes and make's own
# `$(shell …)`, and checks that the file was read as named and that nothing they spell ran.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# No slash in it (it goes into a file name): a command it spells would touch it in the current folder.
marker="livermore-make-ran-$$"

url=$(LOCAL_PG_DATABASE=livermore_make scripts/local-db.sh up)
LIVERMORE_DATABASE_URL="$url" sqlx database drop -y -f >/dev/null
LIVERMORE_DATABASE_URL="$url" sqlx database create
LIVERMORE_DATABASE_URL="$url" sqlx migrate run --source migrations >/dev/null

name="$work/it's \"\$(touch $marker)\" \`touch $marker\`; x.json"
printf '%s\n' '{"id":"user_make","email_addresses":[{"id":"e","email_address":"make@example.com"}],"primary_email_address_id":"e","updated_at":1700000000000}' >"$name"

out=$(LIVERMORE_DATABASE_URL="$url" make -s --no-print-directory import-clerk FILE="$name" 2>&1) || {
  printf '%s\n' "$out" >&2
  echo "error: make import-clerk failed on a file name with quotes, \$(…) and spaces" >&2
  exit 1
}
grep -q "created    1" <<<"$out" || { printf '%s\n' "$out" >&2; echo "error: the file was not imported" >&2; exit 1; }

# make's own function syntax in a value is data too.
if LIVERMORE_DATABASE_URL="$url" make -s --no-print-directory import-clerk FILE="\$(shell touch $marker)" >/dev/null 2>&1; then
  echo "error: a file named \$(shell …) was imported?" >&2
  exit 1
fi
if make -s --no-print-directory migrate-status ENV="\$(shell touch $marker)" >/dev/null 2>&1; then
  echo "error: an ENV spelled \$(shell …) was accepted" >&2
  exit 1
fi
if [ -e "$marker" ] || [ -e "$work/$marker" ]; then
  rm -f "$marker"
  echo "error: a value given to make ran as code" >&2
  exit 1
fi
echo "make passes FILE and ENV as data: ok"
