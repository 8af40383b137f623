# livermore-db: `make help` lists the targets.
#
# The crate's database variable is LIVERMORE_DATABASE_URL (sqlx.toml's `database-url-var`: its query
# macros and sqlx-cli read it, never DATABASE_URL). With it unset, every target that needs a database
# uses a project-local PostgreSQL cluster (scripts/local-db.sh) that it initialises and starts as
# needed. With it set, that database is used instead and nothing local is started.
#
# User-given values (FILE, ENV, LIVERMORE_DATABASE_URL, …) reach commands through the environment, as
# data: no recipe pastes them into shell code.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

SQLX_CLI_VERSION := 0.9.0
CARGO_MUTANTS_VERSION := 27.1.0
MUTANTS_ROOT ?= $(HOME)/.cache/livermore-db/cargo-mutants-$(CARGO_MUTANTS_VERSION)
# sqlx-cli built with `sqlx-toml` (so that it reads sqlx.toml's variable), in a folder of its own: a
# sqlx-cli 0.9.0 built without that feature elsewhere on PATH is never used by mistake.
SQLX_ROOT ?= $(HOME)/.cache/livermore-db/sqlx-cli-$(SQLX_CLI_VERSION)-sqlx-toml
export PATH := $(SQLX_ROOT)/bin:$(PATH)
ENV ?= local
VALID_ENVS := local sandbox
LOCAL_DB := scripts/local-db.sh
CARGO ?= cargo

# `$(value …)`: a value given on the command line is never expanded, so make functions in it
# (`$(shell …)`) stay text.
ifeq ($(filter $(value ENV),$(VALID_ENVS)),)
$(error unknown ENV; valid: $(VALID_ENVS))
endif
export LIVERMORE_ENV := $(value ENV)
export LIVERMORE_IMPORT_FILE := $(value FILE)
export LIVERMORE_TIMING_RUNS := $(value RUNS)
export LIVERMORE_TIMING_FILTER := $(value FILTER)
export LIVERMORE_LOCK_BUDGET_SECS := $(value LOCK_BUDGET_SECS)
MUTANTS_FILES ?= src/clerk/webhook.rs src/clerk/apply.rs src/db/routing.rs src/db/dispatch.rs \
  src/db/node/queue.rs src/db/node/sender.rs src/input.rs \
  src/users/mod.rs src/users/username.rs src/bin/livermore-clerk-webhooks/service.rs
export LIVERMORE_MUTANTS_FILES := $(value MUTANTS_FILES)
export LIVERMORE_MUTANTS_RE := $(value MUTANTS_RE)
# make exports command-line variables to every recipe, expanding them on the way: not these.
unexport ENV FILE DRY_RUN RUNS FILTER MUTANTS_FILES MUTANTS_RE LOCK_BUDGET_SECS

.PHONY: help db-up db-down db-url sqlx-cli migrate migrate-status drift import-clerk prepare test \
  test-consumer test-make test-package test-typescript typescript-roles lint doc fmt example webhook bench \
  bench-cost bench-migrate timing-under-load mutants

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

db-up: ## Start the local PostgreSQL (initdb first if needed)
	@$(LOCAL_DB) up >/dev/null

db-down: ## Stop the local PostgreSQL (and the sandbox emulator, standbys, scratch cluster and PgBouncer the tests start)
	@scripts/standby.sh down
	@scripts/foreign-standby.sh down
	@scripts/pgbouncer.sh down
	@scripts/scratch-db.sh down
	@$(LOCAL_DB) down
	@scripts/sandbox-emulator.sh down

db-url: ## Print the database URL alone on the last line (psql "`make -s db-url`")
	@$(LOCAL_DB) url

sqlx-cli: ## Install the pinned sqlx-cli (with sqlx-toml) into SQLX_ROOT unless it is there
	@if [ "$$("$(SQLX_ROOT)/bin/sqlx" --version 2>/dev/null)" != "sqlx-cli $(SQLX_CLI_VERSION)" ]; then \
	  echo "installing sqlx-cli $(SQLX_CLI_VERSION) into $(SQLX_ROOT) (a few minutes)"; \
	  $(CARGO) install sqlx-cli --version $(SQLX_CLI_VERSION) --no-default-features \
	    --features postgres,rustls,sqlx-toml --locked --quiet --root "$(SQLX_ROOT)"; \
	fi

# The operator command (src/bin/livermore-db, feature `cli`), built against the committed offline
# cache. For ENV=local it gets LIVERMORE_DATABASE_URL (the project-local database unless you set one);
# for ENV=sandbox it reads the PG_SANDBOX_* variables from the environment itself: no password passes
# through a command line.
LIVERMORE_DB = SQLX_OFFLINE=true $(CARGO) run --quiet --features cli --bin livermore-db --
ifeq ($(value ENV),local)
WITH_DB = url=$$($(LOCAL_DB) up); export LIVERMORE_DATABASE_URL="$$url";
else
WITH_DB =
endif

migrate: ## Create the database if missing, apply pending migrations (ENV=local|sandbox, DRY_RUN=1, LOCK_BUDGET_SECS=60)
	@$(WITH_DB) $(LIVERMORE_DB) --env "$$LIVERMORE_ENV" migrate $(if $(value DRY_RUN),--dry-run) \
	  $(if $(value LOCK_BUDGET_SECS),--lock-budget-secs "$$LIVERMORE_LOCK_BUDGET_SECS")

migrate-status: ## List applied, pending and mismatched migrations (ENV=local|sandbox)
	@$(WITH_DB) $(LIVERMORE_DB) --env "$$LIVERMORE_ENV" status

drift: ## Compare the live schema with the migrations; exit 1 on a difference (ENV=local|sandbox)
	@$(WITH_DB) $(LIVERMORE_DB) --env "$$LIVERMORE_ENV" drift

import-clerk: ## Backfill Clerk users from FILE=users.json (a JSON array or JSON lines; ENV=local|sandbox)
	@[ -n "$$LIVERMORE_IMPORT_FILE" ] || { echo "usage: make import-clerk FILE=users.json [ENV=local|sandbox]" >&2; exit 1; }
	@$(WITH_DB) $(LIVERMORE_DB) --env "$$LIVERMORE_ENV" import-clerk -- "$$LIVERMORE_IMPORT_FILE"

# A database migrated anew from migrations/ with sqlx-cli (no build of ours needed): on the local cluster a
# scratch database $(1), dropped first, so that a stale local database never decides what passes; with
# LIVERMORE_DATABASE_URL set, that database as it is (never dropped).
define FRESH_DB
if [ -n "$${LIVERMORE_DATABASE_URL:-}" ]; then \
  url="$$LIVERMORE_DATABASE_URL"; \
else \
  url=$$(LOCAL_PG_DATABASE=$(1) $(LOCAL_DB) up); \
  LIVERMORE_DATABASE_URL="$$url" sqlx database drop -y -f >/dev/null; \
fi; \
export LIVERMORE_DATABASE_URL="$$url"; \
sqlx database create; \
sqlx migrate run --source migrations >/dev/null;
endef

prepare: sqlx-cli ## Regenerate the offline query cache in .sqlx/ (commit it)
	@$(call FRESH_DB,livermore_prepare) \
	$(CARGO) sqlx prepare -- --all-targets --all-features

# `#[sqlx::test]` reads DATABASE_URL at run time (sqlx.toml does not change that): the tests get the
# crate's database there; the macros still compile from the cache (SQLX_OFFLINE=true).
test: sqlx-cli ## Everything CI checks: tests, consumer build, packaging, cache check, docs, lint
	@$(call FRESH_DB,livermore_test) \
	echo "== cargo test (SQLX_OFFLINE=true: the committed .sqlx/ cache)"; \
	DATABASE_URL="$$url" SQLX_OFFLINE=true $(CARGO) test --all-targets --all-features; \
	echo "== cargo test, the timing tests one at a time (#[ignore = \"timing: …\"]: bounds on 2 cores)"; \
	DATABASE_URL="$$url" SQLX_OFFLINE=true $(CARGO) test --all-features --test it -- --ignored --test-threads=1; \
	DATABASE_URL="$$url" SQLX_OFFLINE=true $(CARGO) test --doc --all-features; \
	echo "== cargo sqlx prepare --check"; \
	$(CARGO) sqlx prepare --check -- --all-targets --all-features
	@$(MAKE) --no-print-directory test-consumer test-make test-package test-typescript doc lint

# The TypeScript services' role module, generated from the Role enum (docs/typescript.md). The test
# suite fails while the committed copy differs from what the enum generates.
typescript-roles: ## Write docs/typescript/role.ts from the Role enum (after adding a role; commit it)
	@SQLX_OFFLINE=true $(CARGO) run --quiet --features cli --bin livermore-db -- roles --typescript docs/typescript/role.ts
	@echo "wrote docs/typescript/role.ts"

test-typescript: ## Compile docs/typescript/role.ts with a pinned tsc --strict and run it under node --test
	@scripts/typescript-check.sh

# Not part of `make test` (20 runs take about 15 minutes on 2 cores): run it after changing anything
# that a timing test bounds (routing, the handle's connections, the timing tests themselves).
timing-under-load: sqlx-cli ## The timing tests RUNS times (default 20) with every core kept busy (FILTER= some)
	@$(call FRESH_DB,livermore_test) \
	DATABASE_URL="$$url" RUNS="$$LIVERMORE_TIMING_RUNS" FILTER="$$LIVERMORE_TIMING_FILTER" \
	  scripts/timing-under-load.sh

# Mutation testing over the files where a surviving break is a security or data-loss defect (issue
# 35): scripts/mutants.sh, each file's mutants checked by the tests that guard it, on a fresh test
# database. Mutants are built and tested in place (the working tree's files are changed one at a
# time and restored): run it in a clone of its own. About a minute per mutant on 2 cores (about 470
# in all), so not part of `make test`. MUTANTS_FILES (space-separated) narrows it, MUTANTS_RE (a
# regex on the mutant's name, which includes its function) narrows further; results in
# mutants.out/ (summary.txt), and the last run's in MUTANTS.md.
mutants: sqlx-cli ## cargo-mutants (pinned) over the security and data-loss files (hours; mutants.out/)
	@if [ "$$("$(MUTANTS_ROOT)/bin/cargo-mutants" mutants --version 2>/dev/null)" != "cargo-mutants $(CARGO_MUTANTS_VERSION)" ]; then \
	  echo "installing cargo-mutants $(CARGO_MUTANTS_VERSION) into $(MUTANTS_ROOT) (a few minutes)"; \
	  $(CARGO) install cargo-mutants --version $(CARGO_MUTANTS_VERSION) --locked --quiet --root "$(MUTANTS_ROOT)"; \
	fi
	@$(call FRESH_DB,livermore_test) \
	DATABASE_URL="$$url" SQLX_OFFLINE=true CARGO_MUTANTS="$(MUTANTS_ROOT)/bin/cargo-mutants" scripts/mutants.sh

test-make: sqlx-cli ## make hands FILE and ENV to commands as data: names with quotes, $(…), spaces
	@echo "== make passes values, never code"
	@scripts/test-make-values.sh

# A service crate outside the package (tests/consumer) that depends on livermore-db by path. It is built
# twice with livermore-db recompiled each time: with no database variable at all, and with DATABASE_URL
# on a closed port plus a .env naming another database (its own tables' variable, as any sqlx service
# has). Both must build from the committed cache. Then it runs against a scratch database.
CONSUMER_TARGET := $(CURDIR)/target/consumer
test-consumer: ## Build tests/consumer with hostile DATABASE_URL settings and run it
	@echo "== consumer: build with no database variable"
	@cd tests/consumer && export CARGO_TARGET_DIR="$(CONSUMER_TARGET)" && \
	env -u DATABASE_URL -u LIVERMORE_DATABASE_URL -u SQLX_OFFLINE $(CARGO) clean --quiet -p livermore-db && \
	env -u DATABASE_URL -u LIVERMORE_DATABASE_URL -u SQLX_OFFLINE $(CARGO) build --quiet
	@echo "== consumer: build with DATABASE_URL on a closed port and a .env naming another database"
	@cd tests/consumer && export CARGO_TARGET_DIR="$(CONSUMER_TARGET)" && \
	trap 'rm -f .env' EXIT && \
	printf 'DATABASE_URL=postgres://service@127.0.0.1:9/service_db\nSQLX_OFFLINE=false\n' >.env && \
	env -u LIVERMORE_DATABASE_URL DATABASE_URL=postgres://service@127.0.0.1:9/closed $(CARGO) clean --quiet -p livermore-db && \
	env -u LIVERMORE_DATABASE_URL DATABASE_URL=postgres://service@127.0.0.1:9/closed SQLX_OFFLINE=false $(CARGO) build --quiet
	@echo "== consumer: what a service compiles (cargo tree -e normal)"
	@cd tests/consumer && tree=$$(CARGO_TARGET_DIR="$(CONSUMER_TARGET)" $(CARGO) tree -e normal --prefix none) && \
	if grep -E '^(indicatif|console|clap|clap_builder) ' <<<"$$tree"; then \
	  echo "error: a service compiles operator-only crates (above)" >&2; exit 1; fi
	@echo "== consumer: run against a scratch database"
	@url=$$(LOCAL_PG_DATABASE=livermore_consumer $(LOCAL_DB) up) && \
	LIVERMORE_DATABASE_URL="$$url" sqlx database drop -y -f >/dev/null && \
	LIVERMORE_DATABASE_URL="$$url" sqlx database create && \
	cd tests/consumer && DATABASE_URL="$$url" CARGO_TARGET_DIR="$(CONSUMER_TARGET)" $(CARGO) run --quiet

test-package: ## The packaged crate holds migrations/, .sqlx/ and sqlx.toml
	@echo "== cargo package --list"
	@list=$$($(CARGO) package --list --allow-dirty) && \
	for need in sqlx.toml migrations/0001_users_baseline.up.sql build.rs; do \
	  grep -qxF "$$need" <<<"$$list" || { echo "error: the package lacks $$need" >&2; exit 1; }; done && \
	for q in .sqlx/*.json; do \
	  grep -qxF "$$q" <<<"$$list" || { echo "error: the package lacks $$q" >&2; exit 1; }; done

doc: ## cargo doc with warnings as errors
	@echo "== cargo doc"
	@RUSTDOCFLAGS="-D warnings" SQLX_OFFLINE=true $(CARGO) doc --no-deps --all-features --quiet

example: migrate ## Run examples/sign_in.rs against the database: sign in twice, log in, set a role
	@url=$$($(LOCAL_DB) up); export DATABASE_URL="$$url"; \
	SQLX_OFFLINE=true $(CARGO) run --quiet --example sign_in

webhook: migrate ## Serve the Clerk webhook service on the local database (CLERK_WEBHOOK_SECRET, LISTEN_ADDR)
	@url=$$($(LOCAL_DB) up); export DATABASE_URL="$$url"; \
	SQLX_OFFLINE=true $(CARGO) run --quiet --features webhook-service --bin livermore-clerk-webhooks

bench: ## Benchmarks against pgbench and psql \copy on the local server (see BENCHMARKS.md)
	@url=$$($(LOCAL_DB) up); export DATABASE_URL="$$url"; \
	SQLX_OFFLINE=true $(CARGO) bench --bench iam

bench-cost: ## The client's instructions per look-up (callgrind) at 1-64 tasks: held connections, Db, pool (see BENCHMARKS.md)
	@url=$$($(LOCAL_DB) up); export DATABASE_URL="$$url"; \
	SQLX_OFFLINE=true $(CARGO) bench --bench cost

bench-migrate: ## The pending migrations on a users of BENCH_MIGRATE_ROWS rows (default 1 000 000) under pgbench load (see BENCHMARKS.md)
	@url=$$($(LOCAL_DB) up); export DATABASE_URL="$$url"; \
	SQLX_OFFLINE=true $(CARGO) bench --features cli --bench migrate

lint: ## clippy -D warnings, rustfmt --check (built offline, no database variable); squawk on migrations/
	env -u DATABASE_URL -u LIVERMORE_DATABASE_URL SQLX_OFFLINE=true $(CARGO) clippy --all-targets --all-features -- -D warnings
	env -u DATABASE_URL -u LIVERMORE_DATABASE_URL SQLX_OFFLINE=true $(CARGO) clippy --lib -- -D warnings
	$(CARGO) fmt --check
	bash scripts/squawk.sh

fmt: ## Format the code
	$(CARGO) fmt
