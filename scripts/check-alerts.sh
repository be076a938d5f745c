#!/usr/bin/env bash
# Checks and unit-tests the Prometheus alerts (deploy/prometheus/), installing Debian's `prometheus`
# package for promtool when it is absent, and makes sure the Helm chart's copy is identical, every
# metric an alert reads is in docs/metrics.md and every runbook_url has its docs/operations.md section.
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
if ! python3 -c 'import yaml' 2>/dev/null; then
  log "installing PyYAML (Debian package python3-yaml)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-yaml >/dev/null
fi

rules=deploy/prometheus/regrelay-alerts.yaml
cmp -s "$rules" helm/regrelay/files/regrelay-alerts.yaml \
  || { log "helm/regrelay/files/regrelay-alerts.yaml differs from $rules: cp $rules helm/regrelay/files/"; exit 1; }
out=$(promtool check rules "$rules" 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
out=$(promtool test rules deploy/prometheus/regrelay-alerts.test.yaml 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
# Every metric an alert reads is documented, every runbook_url has its docs/operations.md section.
# PENDING: metrics an alert may read before docs/metrics.md lists them (none now).
PENDING="" python3 - "$rules" <<'PY'
import os, re, sys, yaml
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]]
documented = set(re.findall(r"`(regrelay_[a-z_]+)`", open("docs/metrics.md").read()))
pending = set(os.environ["PENDING"].split())
headings = {line.strip().lower() for line in open("docs/operations.md") if line.startswith("### Alert: ")}
problems = []
for r in rules:
    for name in set(re.findall(r"regrelay_[a-z_]+", r["expr"])):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base not in documented and base not in pending:
            problems.append(f"{r['alert']}: {name} is not in docs/metrics.md")
    for key in ("summary", "description", "runbook_url"):
        if key not in r.get("annotations", {}):
            problems.append(f"{r['alert']}: no {key} annotation")
    if "severity" not in r.get("labels", {}):
        problems.append(f"{r['alert']}: no severity label")
    url = r.get("annotations", {}).get("runbook_url", "")
    if url != "https://example.invalid/regrelay/docs/operations.md#alert-" + r["alert"].lower():
        problems.append(f"{r['alert']}: runbook_url {url!r}")
    if f"### alert: {r['alert'].lower()}" not in headings:
        problems.append(f"{r['alert']}: no '### Alert: {r['alert']}' section in docs/operations.md")
if problems:
    sys.exit("alerts:\n  " + "\n  ".join(problems))
PY
log "rules valid, unit tests pass, chart copy identical, metrics documented, runbooks present"
