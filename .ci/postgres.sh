#!/usr/bin/env bash
# Starts the Debian PostgreSQL cluster on loopback and makes a role and database for the store
# tests; prints only the URL to export as PRIME_TEST_POSTGRES_URL on stdout (everything else goes
# to stderr). Idempotent; run as root (or a user allowed to sudo to postgres).
# Local use: export PRIME_TEST_POSTGRES_URL=$(.ci/postgres.sh)
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
  as_root pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  as_root pg_ctlcluster "$version" main start >&2  # it may print (e.g. "Removed stale pid file.")
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
psql_admin() { as_root su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -tAq $*"; }
if [ -z "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = 'prime_test'\"")" ]; then
  psql_admin "-c \"CREATE ROLE prime_test LOGIN PASSWORD 'prime_test'\"" >&2
fi
if [ -z "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = 'prime_test'\"")" ]; then
  psql_admin "-c \"CREATE DATABASE prime_test OWNER prime_test\"" >&2
fi
echo "postgresql://prime_test:prime_test@127.0.0.1:$port/prime_test"
