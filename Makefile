# The quick start and the test command of the README.
GO ?= go
# Debian packages the embedded default and the tests use: PostgreSQL 15
# server and client (clusters, pgbench), psycopg2 (client test), mmdebstrap
# (container images of internal/testbed), PgBouncer and Pgpool-II (the
# benchmark harness's comparison targets).
DEB_PKGS := postgresql-15 postgresql-client-15 python3-psycopg2 mmdebstrap iproute2 pgbouncer pgpool2
# Packages whose tests need containers (Docker), start many clusters or run
# the benchmark harness's smoke mode run without the race detector, one
# package at a time; the rest run with it.
SLOW_PKGS := ./integration/... ./internal/testbed/... ./bench/...
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /integration -e /internal/testbed -e /bench)

.PHONY: up test deps postgres vet fmt-check unit integration build

# Start the embedded local default: 2 shards (primary + 2 hot standbys each)
# and the proxy on 127.0.0.1:6432. Installs PostgreSQL 15 first if missing.
# Built and run rather than `go run`: go run exits 1 when the terminal's
# Ctrl-C reaches it, although dbproxy stops everything and exits 0.
up: postgres build
	./dbproxy up

build:
	$(GO) build -o dbproxy ./cmd/dbproxy

# Everything CI checks: vet, formatting, unit tests with -race, integration
# tests on real clusters and containers.
test: deps vet fmt-check unit integration

postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || $(MAKE) --no-print-directory deps

deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@docker info >/dev/null 2>&1 || { echo "FATAL: no Docker engine answers; internal/testbed needs one" >&2; exit 1; }
	$(GO) mod download

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

unit:
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

integration:
	TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -count=1 -timeout 25m -p 1 $(SLOW_PKGS)
