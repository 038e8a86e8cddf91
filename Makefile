# agentmesh — every target a new machine needs. `make dev` and `make test` are
# the two commands a new user runs; everything else is installed from here.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3.11
UV_VERSION := 0.13.0
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# uv must use this machine's Python, never download one.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# The venv's tools (buf, envoy, dbmate, ruff, protoc plugins) come first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

PROTOS := $(sort $(wildcard proto/agentmesh/v1/*.proto))
PROTO_FILES := $(patsubst proto/%,%,$(PROTOS))
GEN_OUT ?= gen
PYTEST_ARGS ?=
DEV_ARGS ?=

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

.PHONY: env
env: $(VENV)/.synced ## create/refresh the virtual environment from uv.lock

.PHONY: dev
dev: env ## bring the whole mesh up on embedded defaults (Ctrl-C stops it; DEV_ARGS="--embedder hash" ...)
	$(BIN)/python -m agentmesh.devstack $(DEV_ARGS)

.PHONY: gen
gen: env ## regenerate gen/ from proto/ (buf build + protoc plugins)
	$(BIN)/buf lint
	rm -rf $(GEN_OUT)/agentmesh $(GEN_OUT)/descriptors
	mkdir -p $(GEN_OUT)/descriptors $(GEN_OUT)/agentmesh/sdkgen
	# One compiled image of our protos, the vendored googleapis and grpc.health.v1, and the
	# well-known types: Envoy's transcoder loads it, and protoc generates from it (no second
	# parse). grpcurl -protoset reads it too, so it keeps the comments (source info):
	# `grpcurl describe` prints them, and the .pyi stubs carry them as docstrings.
	$(BIN)/buf build --as-file-descriptor-set \
	  -o $(GEN_OUT)/descriptors/agentmesh.binpb
	$(BIN)/python -m grpc_tools.protoc \
	  --descriptor_set_in=$(GEN_OUT)/descriptors/agentmesh.binpb \
	  --python_out=$(GEN_OUT) --grpc_python_out=$(GEN_OUT) \
	  --mypy_out=$(GEN_OUT) --mypy_grpc_out=$(GEN_OUT) \
	  $(PROTO_FILES)
	# The SDK generator needs source info (it turns proto comments into docstrings).
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BIN)/buf build --as-file-descriptor-set -o $$tmp/image.binpb && \
	  $(BIN)/python -m grpc_tools.protoc --descriptor_set_in=$$tmp/image.binpb \
	    --python_betterproto2_out=$(GEN_OUT)/agentmesh/sdkgen \
	    --python_betterproto2_opt=client_generation=sync_async \
	    $(PROTO_FILES) > /dev/null
	touch $(GEN_OUT)/agentmesh/v1/__init__.py $(GEN_OUT)/agentmesh/v1/py.typed
	# The OpenAPI 3.1 description of the JSON API, from the same descriptor set Envoy's
	# transcoder loads (Envoy serves it at /openapi.json; docs/adr/0028).
	$(BIN)/python -m agentmesh.devstack.openapi \
	  $(GEN_OUT)/descriptors/agentmesh.binpb $(GEN_OUT)/openapi/agentmesh.json

# Swagger UI for the docs page Envoy serves at /docs/, vendored unchanged from the npm
# registry (envoy/docs/README.md). Only to move to another version: the files are committed.
SWAGGER_UI_VERSION := 5.35.0
SWAGGER_UI_SHA512 := U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE

.PHONY: vendor-docs-ui
vendor-docs-ui: ## fetch Swagger UI $(SWAGGER_UI_VERSION) from npm into envoy/docs/swagger-ui (integrity-checked)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  curl -fsSL -o $$tmp/ui.tgz \
	    https://registry.npmjs.org/swagger-ui-dist/-/swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz && \
	  test "$$(openssl dgst -sha512 -binary $$tmp/ui.tgz | base64 -w0)" = '$(SWAGGER_UI_SHA512)' && \
	  tar -xzf $$tmp/ui.tgz -C $$tmp && rm -rf envoy/docs/swagger-ui && \
	  mkdir -p envoy/docs/swagger-ui && \
	  for f in $(SWAGGER_UI_FILES); do cp $$tmp/package/$$f envoy/docs/swagger-ui/; done && \
	  (cd envoy/docs/swagger-ui && sha256sum $(SWAGGER_UI_FILES) > SHA256SUMS && \
	    echo "swagger-ui-dist $(SWAGGER_UI_VERSION)" > VERSION)

.PHONY: dashboards
dashboards: env ## regenerate observability/dashboards/*.json from agentmesh.observability (a test fails on drift)
	$(BIN)/python -m agentmesh.observability.dashboards --out observability/dashboards

.PHONY: check-gen
check-gen: env ## fail if gen/ differs from what `make gen` writes
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(MAKE) gen GEN_OUT=$$tmp >/dev/null && \
	  if ! diff -r -q gen "$$tmp" -x __pycache__; then \
	    echo "gen/ is stale: run make gen and commit the result" >&2; exit 1; fi
	@echo "gen/ matches make gen"

.PHONY: lint
lint: env ## ruff, mypy (strict), buf lint, the contract's compatibility gate (buf breaking)
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/python -m agentmesh.devstack.contract_gate --buf $(BIN)/buf

# The database `make dev` runs (unix socket in .data/postgres), as the owner of the
# schemas (migrations create tables, indexes and roles); override for another one.
AGENTMESH_MIGRATE_DATABASE_URL ?= postgresql://postgres@/agentmesh?host=$(CURDIR)/.data/postgres

.PHONY: migrate
migrate: env ## apply migrations/ and build the HNSW index, as AGENTMESH_MIGRATE_DATABASE_URL (default: the make-dev database, running)
	AGENTMESH_MIGRATE_DATABASE_URL='$(AGENTMESH_MIGRATE_DATABASE_URL)' $(BIN)/python -m agentmesh.devstack.migrate up

# Coverage of services/ (docs/adr/0031-coverage.md): pytest runs under coverage.py, and so
# does every Python process it starts (services, worker, CLI, bench; pyproject.toml's
# [tool.coverage.run]). Each process writes its own data file into COVERAGE_DIR, emptied
# first; they are combined, reported, written as JSON and gated. The floors are the
# measured figures rounded down (README, `make test`); the line floor never goes below
# 85 %. A run of part of the suite (PYTEST_ARGS) is reported without the floors.
COVERAGE_DIR := .coverage-data
COVERAGE_MIN_LINES := 90
COVERAGE_MIN_BRANCHES := 80

.PHONY: test
test: env bench-tools browser-tools obs-tools checkov-tools check-gen lint ## the whole suite (unit, integration, component, e2e, the small bench) against real servers, with coverage
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)
	status=0; $(BIN)/coverage run -m pytest $(PYTEST_ARGS) || status=$$?; \
	  $(BIN)/coverage combine --quiet; \
	  $(BIN)/coverage report; \
	  $(BIN)/coverage json --quiet; \
	  $(if $(strip $(PYTEST_ARGS)), \
	    echo "coverage of part of the suite (PYTEST_ARGS): the floors are not applied";, \
	    $(BIN)/python -m agentmesh.devstack.coverage_gate $(COVERAGE_DIR)/coverage.json \
	      --min-lines $(COVERAGE_MIN_LINES) --min-branches $(COVERAGE_MIN_BRANCHES) \
	      || status=$$(( status ? status : 1 ));) \
	  exit $$status

.PHONY: bench
bench: env bench-tools ## benchmarks; writes docs/benchmarks.md (BENCH_ARGS="--small" for a smoke run)
	$(BIN)/python -m agentmesh.bench $(BENCH_ARGS)

# h2load (Debian's nghttp2-client) drives the benchmarks' load; the suite runs the small
# bench as a smoke test, so `make test` needs it too.
.PHONY: bench-tools
bench-tools:
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }

# checkov (the policy check of the k8s manifests and the image, ADR 0030) pins libraries
# the services' dependencies cannot share (boto3), so it gets an environment of its own,
# from its own lock (tools/checkov/uv.lock); bytecode compiled once here, not per run.
CHECKOV_ENV := $(TOOLS)/checkov

$(CHECKOV_ENV)/.synced: tools/checkov/pyproject.toml tools/checkov/uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(CHECKOV_ENV) UV_COMPILE_BYTECODE=1 \
	  $(UV) sync --frozen --project tools/checkov --python $(PYTHON)
	touch $@

.PHONY: checkov-tools
checkov-tools: $(CHECKOV_ENV)/.synced ## install checkov (tools/checkov/uv.lock) into .tools/checkov

# Debian's chromium: the suite opens the API docs page in it (Playwright drives it by
# its executable path; Playwright never downloads a browser here).
.PHONY: browser-tools
browser-tools:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Debian's prometheus: promtool checks and unit-tests observability/rules, and the suite
# starts the server itself (on a free loopback port) to evaluate every dashboard query
# and rule against the running mesh. Without recommends (no node exporter); the package's
# service is never started here: nothing may keep a Prometheus on :9090.
.PHONY: obs-tools
obs-tools:
	@command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then \
	  systemctl disable --now prometheus >/dev/null 2>&1; fi

.PHONY: clean
clean: ## remove the environment, caches and dev data (.data/)
	rm -rf $(VENV) $(TOOLS) .data $(COVERAGE_DIR) .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
