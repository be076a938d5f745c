#!/usr/bin/env bash
# Runs every test against the real RabbitMQ and PostgreSQL on this machine, starting (or installing)
# them first. Each test isolates itself with its own queue prefix and database, so runs can share
# the services. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
# promtool check/test rules on deploy/prometheus/ (installs promtool when absent).
scripts/check-alerts.sh
cargo fmt --all -- --check
# --workspace also builds the `regrelay` binary that the bench's smoke test (crates/bench/tests)
# starts beside `regrelay-bench`: keep both packages in one invocation.
cargo test --workspace --locked "$@"
scripts/check-dashboard.sh # every Grafana panel and alert query against a real Prometheus scraping target/debug/regrelay
