#!/usr/bin/env bash
# Runs every test against the real RabbitMQ and PostgreSQL on this machine, starting (or installing)
# them first. Each test isolates itself with its own queue prefix and database, so runs can share
# the services. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
cargo fmt --all -- --check
cargo test --workspace --locked "$@"
