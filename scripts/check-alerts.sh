#!/usr/bin/env bash
# Checks and unit-tests the Prometheus alerts (deploy/prometheus/), installing Debian's `prometheus`
# package for promtool when it is absent, and makes sure the Helm chart's copy is identical.
# Idempotent and quiet; run by scripts/test.sh, safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'alerts: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

rules=deploy/prometheus/regrelay-alerts.yaml
cmp -s "$rules" helm/regrelay/files/regrelay-alerts.yaml \
  || { log "helm/regrelay/files/regrelay-alerts.yaml differs from $rules: cp $rules helm/regrelay/files/"; exit 1; }
out=$(promtool check rules "$rules" 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
out=$(promtool test rules deploy/prometheus/regrelay-alerts.test.yaml 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
log "rules valid, unit tests pass, chart copy identical"
