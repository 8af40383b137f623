#!/usr/bin/env bash
# The timing tests (`#[ignore = "timing: …"]`, which `make test` runs alone) RUNS times in a row
# (default 20) with every core kept busy by spinning processes of this script's own: the check that
# a timing claim holds on a busy host, not only on an idle one. `make timing-under-load` runs it on a
# fresh test database (DATABASE_URL); FILTER (default: all timing tests) narrows it to some.
#
# Prints each run's result and the routing figures the tests print (look-ups on the standby, why the
# others went to the primary); exits 1 if any run failed. The spinners stop with the script.
set -euo pipefail

runs=${RUNS:-20}
filter=${FILTER:-}
[[ "$runs" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "timing-under-load: RUNS must be a whole number from 1 to 9999" >&2; exit 2; }
[ -n "${DATABASE_URL:-}" ] || { echo "timing-under-load: DATABASE_URL is not set (run it through make)" >&2; exit 2; }
cd "$(dirname "$0")/.."

log=$(mktemp)
spinners=()
cleanup() {
  [ ${#spinners[@]} -gt 0 ] && kill "${spinners[@]}" 2>/dev/null
  rm -f "$log"
}
trap cleanup EXIT INT TERM

echo "== building the tests"
SQLX_OFFLINE=true cargo test --all-features --test it --no-run --quiet
workers=$(nproc)
echo "== $runs runs of the timing tests, with $workers spinning processes beside them"
for _ in $(seq 1 "$workers"); do
  # Bounded: a spinner outliving a killed script stops by itself after an hour.
  ( end=$((SECONDS + 3600)); while [ $SECONDS -lt $end ]; do :; done ) &
  spinners+=($!)
done

failed=0
for run in $(seq 1 "$runs"); do
  started=$SECONDS
  if SQLX_OFFLINE=true cargo test --all-features --test it --quiet -- --ignored --test-threads=1 \
      --nocapture ${filter:+"$filter"} >"$log" 2>&1; then
    result=passed
  else
    result=FAILED
    failed=$((failed + 1))
  fi
  echo "run $run: $result in $((SECONDS - started)) s"
  grep -oE '(under writes|paused replica|beside the migration).*' "$log" | sed 's/^/  /' || true
  if [ "$result" = FAILED ]; then
    grep -E 'panicked at|^test .* FAILED' -A2 "$log" | grep -v '^--$' | sed 's/^/  /' | head -20
  fi
done
echo "$((runs - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
