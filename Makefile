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

.PHONY: help db-up db-down db-url sqlx-cli migrate prepare test lint fmt example

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

db-up: ## Start the local PostgreSQL (initdb first if needed)
	@$(LOCAL_DB) up >/dev/null

db-down: ## Stop the local PostgreSQL
	@$(LOCAL_DB) down

db-url: ## Print the database URL on the last line (for psql "$$(make -s db-url)")
	@$(LOCAL_DB) url

sqlx-cli: ## Install sqlx-cli $(SQLX_CLI_VERSION) unless that version is on PATH
	@if [ "$$(sqlx --version 2>/dev/null)" != "sqlx-cli $(SQLX_CLI_VERSION)" ]; then \
	  echo "installing sqlx-cli $(SQLX_CLI_VERSION) (a few minutes)"; \
	  $(CARGO) install sqlx-cli --version $(SQLX_CLI_VERSION) --no-default-features \
	    --features postgres,rustls --locked --quiet; \
	fi

migrate: sqlx-cli ## Create the database if missing and apply pending migrations (ENV=local|sandbox)
ifeq ($(ENV),local)
	@export DATABASE_URL="$$($(LOCAL_DB) up)"; \
	sqlx database create; \
	sqlx migrate run --source migrations; \
	echo "now:"; \
	sqlx migrate info --source migrations
else
	@echo "ENV=$(ENV) is not implemented yet" >&2; exit 1
endif

prepare: sqlx-cli migrate ## Regenerate the offline query cache in .sqlx/ (commit it)
	@export DATABASE_URL="$$($(LOCAL_DB) up)"; \
	$(CARGO) sqlx prepare -- --all-targets

test: sqlx-cli migrate ## Everything CI checks: tests (offline build), cache check, clippy, rustfmt
	@export DATABASE_URL="$$($(LOCAL_DB) up)"; \
	echo "== cargo test (SQLX_OFFLINE=true: the committed .sqlx/ cache)"; \
	SQLX_OFFLINE=true $(CARGO) test --all-targets; \
	SQLX_OFFLINE=true $(CARGO) test --doc; \
	echo "== cargo sqlx prepare --check"; \
	$(CARGO) sqlx prepare --check -- --all-targets; \
	$(MAKE) --no-print-directory lint

example: migrate ## Run examples/sign_in.rs against the database: sign in twice, log in, set a role
	@export DATABASE_URL="$$($(LOCAL_DB) up)"; \
	SQLX_OFFLINE=true $(CARGO) run --quiet --example sign_in

lint: ## clippy with -D warnings and rustfmt --check, built offline with no DATABASE_URL
	env -u DATABASE_URL SQLX_OFFLINE=true $(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

fmt: ## Format the code
	$(CARGO) fmt
