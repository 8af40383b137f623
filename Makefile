# livermore-db: `make help` lists the targets.
#
# With DATABASE_URL unset, every target that needs a database uses a project-local PostgreSQL cluster
# (scripts/local-db.sh) that it initialises and starts as needed. With DATABASE_URL set, that database
# is used instead and nothing local is started.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

SQLX_CLI_VERSION := 0.9.0
ENV ?= local
VALID_ENVS := local sandbox
LOCAL_DB := scripts/local-db.sh
CARGO ?= cargo

ifeq ($(filter $(ENV),$(VALID_ENVS)),)
$(error unknown ENV '$(ENV)'; valid: $(VALID_ENVS))
endif

.PHONY: help db-up db-down db-url sqlx-cli migrate migrate-status drift import-clerk prepare test lint fmt example bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

db-up: ## Start the local PostgreSQL (initdb first if needed)
	@$(LOCAL_DB) up >/dev/null

db-down: ## Stop the local PostgreSQL (and the sandbox emulator the tests start)
	@$(LOCAL_DB) down
	@$(LOCAL_DB) sandbox-down

db-url: ## Print the database URL alone on the last line (psql "`make -s db-url`")
	@$(LOCAL_DB) url

sqlx-cli: ## Install the pinned sqlx-cli (SQLX_CLI_VERSION) unless that version is on PATH
	@if [ "$$(sqlx --version 2>/dev/null)" != "sqlx-cli $(SQLX_CLI_VERSION)" ]; then \
	  echo "installing sqlx-cli $(SQLX_CLI_VERSION) (a few minutes)"; \
	  $(CARGO) install sqlx-cli --version $(SQLX_CLI_VERSION) --no-default-features \
	    --features postgres,rustls --locked --quiet; \
	fi

# The operator command (src/bin/livermore-db), built against the committed offline cache. For ENV=local
# it gets DATABASE_URL (the project-local database unless you set one); for ENV=sandbox it reads the
# PG_SANDBOX_* variables from the environment itself: no password passes through a command line.
LIVERMORE_DB = SQLX_OFFLINE=true $(CARGO) run --quiet --bin livermore-db --
ifeq ($(ENV),local)
WITH_DB = export DATABASE_URL="$$($(LOCAL_DB) up)";
else
WITH_DB =
endif

migrate: ## Create the database if missing, apply pending migrations (ENV=local|sandbox, DRY_RUN=1)
	@$(WITH_DB) $(LIVERMORE_DB) --env $(ENV) migrate $(if $(DRY_RUN),--dry-run)

migrate-status: ## List applied, pending and mismatched migrations (ENV=local|sandbox)
	@$(WITH_DB) $(LIVERMORE_DB) --env $(ENV) status

drift: ## Compare the live schema with the migrations; exit 1 on a difference (ENV=local|sandbox)
	@$(WITH_DB) $(LIVERMORE_DB) --env $(ENV) drift

import-clerk: ## Backfill Clerk users from FILE=users.json (a JSON array or JSON lines; ENV=local|sandbox)
	@test -n "$(FILE)" || { echo "usage: make import-clerk FILE=users.json [ENV=local|sandbox]" >&2; exit 1; }
	@$(WITH_DB) $(LIVERMORE_DB) --env $(ENV) import-clerk "$(FILE)"

# A database migrated anew from migrations/ with sqlx-cli (no build of ours needed): on the local cluster a
# scratch database $(1), dropped first, so that a stale local database never decides what passes; with
# DATABASE_URL set, that database as it is (never dropped).
define FRESH_DB
if [ -n "$${DATABASE_URL:-}" ]; then \
  url="$$DATABASE_URL"; \
else \
  url="$$(LOCAL_PG_DATABASE=$(1) $(LOCAL_DB) up)"; \
  DATABASE_URL="$$url" sqlx database drop -y -f >/dev/null; \
fi; \
export DATABASE_URL="$$url"; \
sqlx database create; \
sqlx migrate run --source migrations >/dev/null;
endef

prepare: sqlx-cli ## Regenerate the offline query cache in .sqlx/ (commit it)
	@$(call FRESH_DB,livermore_prepare) \
	$(CARGO) sqlx prepare -- --all-targets

test: sqlx-cli ## Everything CI checks: tests (offline build), cache check, clippy, rustfmt
	@$(call FRESH_DB,livermore_test) \
	echo "== cargo test (SQLX_OFFLINE=true: the committed .sqlx/ cache)"; \
	SQLX_OFFLINE=true $(CARGO) test --all-targets; \
	SQLX_OFFLINE=true $(CARGO) test --doc; \
	echo "== cargo sqlx prepare --check"; \
	$(CARGO) sqlx prepare --check -- --all-targets; \
	$(MAKE) --no-print-directory lint

example: migrate ## Run examples/sign_in.rs against the database: sign in twice, log in, set a role
	@export DATABASE_URL="$$($(LOCAL_DB) up)"; \
	SQLX_OFFLINE=true $(CARGO) run --quiet --example sign_in

bench: ## Benchmarks against pgbench and psql \copy on the local server (see BENCHMARKS.md)
	@export DATABASE_URL="$$($(LOCAL_DB) up)"; \
	SQLX_OFFLINE=true $(CARGO) bench --bench iam

lint: ## clippy with -D warnings and rustfmt --check, built offline with no DATABASE_URL
	env -u DATABASE_URL SQLX_OFFLINE=true $(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

fmt: ## Format the code
	$(CARGO) fmt
