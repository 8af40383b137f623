#!/usr/bin/env bash
# The generated TypeScript role module (docs/typescript/role.ts) as a TypeScript service takes it:
# compiled by a pinned TypeScript with `tsc --strict` (and the stricter flags of
# docs/typescript/tsconfig.json) beside a file of type-level checks, then run under Node's test runner.
# `make test` runs it (target test-typescript); that the file is what the crate generates is checked
# by the Rust test roles::the_typescript_roles_file_is_generated_and_matches_the_database.
#
# TypeScript comes from the npm registry, pinned by version and integrity, into a folder of its own
# under ~/.cache/livermore-db (once; later runs reuse it).
set -euo pipefail

ts_version=5.9.3
ts_integrity='sha512-jl1vZzPDinLr9eUt3J/t7V6FgNEw9QjvBPdysz9KfQDD41fQrC2Y4vKQdiaUpFT4bXlb1RHhLpp8wtm6M5TgSw=='
repo=$(cd "$(dirname "$0")/.." && pwd -P)
src="$repo/docs/typescript"
root="${LIVERMORE_CACHE:-$HOME/.cache/livermore-db}/typescript-$ts_version"

die() { printf 'typescript-check: error: %s\n' "$*" >&2; exit 1; }
command -v node >/dev/null || die "node is not installed (Node.js 20 or newer)"
command -v npm >/dev/null || die "npm is not installed"

tsc="$root/node_modules/typescript/bin/tsc"
if [ "$("$tsc" --version 2>/dev/null)" != "Version $ts_version" ]; then
  echo "installing typescript $ts_version into $root" >&2
  rm -rf "$root"
  mkdir -p "$root"
  # A package-lock of our own, so that npm checks the tarball against the pinned integrity.
  cat >"$root/package.json" <<JSON
{ "name": "livermore-db-typescript-check", "private": true, "dependencies": { "typescript": "$ts_version" } }
JSON
  cat >"$root/package-lock.json" <<JSON
{
  "name": "livermore-db-typescript-check",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": { "name": "livermore-db-typescript-check", "dependencies": { "typescript": "$ts_version" } },
    "node_modules/typescript": {
      "version": "$ts_version",
      "integrity": "$ts_integrity",
      "license": "Apache-2.0",
      "bin": { "tsc": "bin/tsc", "tsserver": "bin/tsserver" },
      "engines": { "node": ">=14.17" }
    }
  }
}
JSON
  (cd "$root" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) ||
    die "npm could not install typescript $ts_version"
  [ "$("$tsc" --version)" = "Version $ts_version" ] || die "typescript $ts_version did not install"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$src/role.ts" "$src/role.typecheck.ts" "$src/tsconfig.json" "$work/"
# The services' packages are ES modules; so is this one.
printf '{ "type": "module" }\n' >"$work/package.json"
echo "== tsc --strict docs/typescript/role.ts (typescript $ts_version)"
(cd "$work" && "$tsc" -p tsconfig.json) || die "role.ts does not compile under --strict"
cp "$src/role.test.mjs" "$work/out/"
printf '{ "type": "module" }\n' >"$work/out/package.json"
echo "== node --test (role.test.mjs over the compiled role.js)"
node --test "$work/out/role.test.mjs"
