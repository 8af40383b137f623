#!/usr/bin/env bash
# Mutation testing (issue 35), one file at a time, each mutant checked by the tests that guard that
# file rather than by the whole suite (which takes minutes per mutant on 2 cores). Called by
# `make mutants` with DATABASE_URL set to a fresh test database and cargo-mutants at $CARGO_MUTANTS.
#
# LIVERMORE_MUTANTS_FILES: the files to mutate (space-separated). A file listed in `tests_for` below is
# tested by its own selection; any other file by every test in the lib and `tests/it`.
# LIVERMORE_MUTANTS_RE (optional): only the mutants whose name matches this regex (cargo-mutants
# `--re`; a name reads `src/db/routing.rs:420:39: replace + with - in check_once`), in place of
# `only_in` below.
#
# Mutants are built and tested in place (the working tree's files are changed one at a time and
# restored), so run this in a clone of its own and leave the tree alone meanwhile. Results: one folder
# per file under mutants.out/ (cargo-mutants' outcomes.json, caught.txt, missed.txt, timeout.txt,
# unviable.txt), and mutants.out/summary.txt. Exit status 1 when a mutant survived or timed out.
set -euo pipefail

: "${CARGO_MUTANTS:?path to cargo-mutants}"
: "${DATABASE_URL:?a test database}"
read -ra files <<<"${LIVERMORE_MUTANTS_FILES:?files to mutate}"

# The tests that guard each file: cargo's target selection, then the harness's name filters (a test
# runs when its path contains any of them). Each selection is wider than the file's own module, so
# that a break seen only from far away (an integration test) still counts as caught.
tests_for() {
  case "$1" in
    src/clerk/webhook.rs) echo "--lib --test=it | webhook" ;;
    src/clerk/apply.rs) echo "--lib --test=it | clerk webhook::" ;;
    src/db/routing.rs | src/db/dispatch.rs) echo "--lib --test=it | routing dispatch replicas:: lookup held::" ;;
    src/db/node/queue.rs | src/db/node/sender.rs) echo "--lib --test=it | lookup" ;;
    src/input.rs) echo "--lib --test=it | input users:: clerk::addresses clerk::random" ;;
    src/users/mod.rs) echo "--lib --test=it | users roles lookup clerk::addresses" ;;
    src/users/username.rs) echo "--lib --test=it | username users::" ;;
    src/bin/livermore-clerk-webhooks/*) echo "--bin=livermore-clerk-webhooks --test=it | webhook service::" ;;
    *) echo "--lib --test=it |" ;;
  esac
}

# The part of a file to mutate, when not all of it guards security or data (a regex on the mutant's
# name, which ends with its function). None now: `src/db/mod.rs` (whose calls' bodies are the users
# module's, mutated there) is not in the list, and its freshness code is `src/db/dispatch.rs`.
only_in() {
  case "$1" in
    *) echo "" ;;
  esac
}

# Each mutant is a rebuild and a relink of the test binaries: without debug info the links take a
# fraction of the time, and nothing here reads a backtrace's line numbers.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}"

out=mutants.out
mkdir -p "$out"
: >"$out/summary.txt"
status=0
for file in "${files[@]}"; do
  selection=$(tests_for "$file")
  read -ra cargo_args <<<"${selection%%|*}"
  read -ra filters <<<"${selection#*|}"
  slug=${file//\//_}
  args=(--in-place --all-features --no-shuffle --file "$file" --output "$out/$slug")
  re=${LIVERMORE_MUTANTS_RE:-$(only_in "$file")}
  if [ -n "$re" ]; then args+=(--re "$re"); fi
  for a in "${cargo_args[@]}"; do args+=(--cargo-arg="$a"); done
  echo "== $file: cargo test ${cargo_args[*]} -- ${filters[*]}"
  # cargo-mutants exits 2 when a mutant survives and 3 when one times out: recorded, not fatal here.
  rc=0
  # After the first `--`, cargo test's own arguments; after the second, the test harness's filters.
  "$CARGO_MUTANTS" mutants "${args[@]}" -- -- "${filters[@]}" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ] && [ "$rc" -ne 3 ]; then
    echo "cargo-mutants failed on $file (exit $rc): see $out/$slug/mutants.out/debug.log" >&2
    exit "$rc"
  fi
  [ "$rc" -eq 0 ] || status=1
  dir="$out/$slug/mutants.out"
  count() { if [ -s "$dir/$1" ]; then wc -l <"$dir/$1"; else echo 0; fi; }
  printf '%s: caught %s, missed %s, timeout %s, unviable %s\n' "$file" \
    "$(count caught.txt)" "$(count missed.txt)" "$(count timeout.txt)" "$(count unviable.txt)" |
    tee -a "$out/summary.txt"
  if [ -s "$dir/missed.txt" ]; then sed 's/^/  missed: /' "$dir/missed.txt" | tee -a "$out/summary.txt"; fi
  if [ -s "$dir/timeout.txt" ]; then sed 's/^/  timeout: /' "$dir/timeout.txt" | tee -a "$out/summary.txt"; fi
done
exit "$status"
