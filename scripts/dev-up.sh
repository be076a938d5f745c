#!/usr/bin/env bash
# One command from a fresh Debian machine to a running regrelay on 127.0.0.1:8080:
# starts (installing when absent) RabbitMQ and PostgreSQL, creates the database, builds, and runs
# `regrelay serve` in the foreground with development defaults. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
# The database for policies and history; harmless when it exists already.
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'regrelay'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE regrelay"

cargo build --release --locked --bin regrelay

# Development credentials; set your own for anything shared.
export REGRELAY_INGEST_TOKEN="${REGRELAY_INGEST_TOKEN:-dev-token}"
export REGRELAY_ADMIN_PASSWORD="${REGRELAY_ADMIN_PASSWORD:-dev-password}"
# Lets the quick start deliver to a receiver on this machine. Never set this in production.
export REGRELAY_ALLOW_PRIVATE_TARGETS="${REGRELAY_ALLOW_PRIVATE_TARGETS:-true}"
exec target/release/regrelay serve "$@"
