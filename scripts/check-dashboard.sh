#!/usr/bin/env bash
# Checks the Grafana dashboard (deploy/grafana/regrelay.json) and the alert rules
# (deploy/prometheus/regrelay-alerts.yaml) against a real Prometheus scraping a real regrelay:
# starts `regrelay serve` (all roles) on a scratch database, RabbitMQ vhost and queue prefix, a
# receiver answering 200, 500 and 404 plus a port nothing listens on (so retries and dead letters
# happen; their circuits open too, probed every second), sends a few dozen events, lets Prometheus
# scrape /metrics every second, then runs every panel query, variable query and alert expression
# through /api/v1/query. Every query must parse;
# every panel needs at least one query with a non-empty result. Cleans up everything on exit.
# Installs Debian's `prometheus` and `python3-yaml` when absent. Run by scripts/test.sh after
# `cargo test` (which builds target/debug/regrelay); REGRELAY_BIN names another binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# Panels whose metrics regrelay does not export yet, separated by `|`: they may be empty (and must
# be, so this list cannot go stale). None now: the process_* metrics are exported too.
PENDING_PANELS=""

log() { printf 'dashboard: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v prometheus >/dev/null 2>&1; then
  log "installing prometheus (Debian package prometheus)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  log "installing PyYAML (Debian package python3-yaml)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-yaml >/dev/null
fi

bin=${REGRELAY_BIN:-target/debug/regrelay}
[ -x "$bin" ] || { log "$bin not found: run cargo build -p regrelay (or set REGRELAY_BIN)"; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

id="dash_$$_$(date +%s)"
db="regrelay_$id"
vhost="regrelay-$id"
prefix="regrelay-$id"
work=$(mktemp -d)
pids=()
ok=false

cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$ok" != true ]; then
    for f in regrelay.log prometheus.log; do
      [ -s "$work/$f" ] && { log "last lines of $f:"; tail -n 20 "$work/$f" >&2; }
    done
  fi
  psql -q -U postgres -h 127.0.0.1 -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 \
    || log "could not drop database $db"
  as_root rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || log "could not delete vhost $vhost"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # seconds, description, command...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { log "timed out waiting for $what"; return 1; }
    sleep 0.5
  done
}

api_port=$(free_port)
recv_port=$(free_port)
prom_port=$(free_port)
dead_port=$(free_port) # nothing listens here: attempts fail with `connect`
api="http://127.0.0.1:$api_port"
prom="http://127.0.0.1:$prom_port"

psql -q -U postgres -h 127.0.0.1 -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
as_root rabbitmqctl -q add_vhost "$vhost" >/dev/null
as_root rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null

# The receiver: 200 on /ok, 500 on /fail (retried, then dead-lettered), 404 on anything else
# (dead-lettered at once as client_error).
cat >"$work/receiver.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response({"/ok": 200, "/fail": 500}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/receiver.py" "$recv_port" &
pids+=($!)

token="dash-ingest-$id"
password="dash-admin-$id"
(
  cd "$work"
  export REGRELAY_LISTEN="127.0.0.1:$api_port" \
    REGRELAY_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
    REGRELAY_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
    REGRELAY_QUEUE_PREFIX="$prefix" \
    REGRELAY_INGEST_TOKEN="$token" REGRELAY_ADMIN_PASSWORD="$password" \
    REGRELAY_ALLOW_PRIVATE_TARGETS=true \
    REGRELAY_MAX_ATTEMPTS=3 REGRELAY_RETRY_INITIAL_DELAY=200ms REGRELAY_RETRY_MAX_DELAY=1s \
    REGRELAY_HTTP_TIMEOUT=2s \
    REGRELAY_BREAKER_PROBE_INTERVAL=1s \
    REGRELAY_QUEUE_DEPTH_INTERVAL=1s REGRELAY_DEAD_LETTER_DEPTH_INTERVAL=1s \
    REGRELAY_HISTORY_SWEEP_INTERVAL=0s REGRELAY_LOG_LEVEL=warn
  exec "$bin" serve
) >"$work/regrelay.log" 2>&1 &
pids+=($!)
wait_for 60 "regrelay /readyz" curl -sf "$api/readyz"

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: regrelay
    static_configs:
      - targets: ["127.0.0.1:$api_port"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)

# promql QUERY: prints the number of series, fails when the query does not succeed.
promql() {
  python3 - "$prom" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
try:
    answer = json.load(urllib.request.urlopen(url, timeout=10))
except Exception:
    sys.exit(1)
if answer.get("status") != "success":
    sys.exit(1)
print(len(answer["data"]["result"]))
PY
}
has_data() { [ "$(promql "$1")" -gt 0 ]; }
wait_for 60 "Prometheus to scrape regrelay" has_data 'up{job="regrelay"} == 1'

# One policy, four targets: delivered, 5xx (retried, then attempts_exhausted), 404 (client_error),
# and a closed port (connect retries, then attempts_exhausted).
target() { printf '{"type":"http","address":"%s","payload_format":"Default"}' "$1"; }
policy=$(printf '{"name":"dashboard-check","event_types":["PUSH_ARTIFACT","DELETE_ARTIFACT"],"enabled":true,"targets":[%s,%s,%s,%s]}' \
  "$(target "http://127.0.0.1:$recv_port/ok")" "$(target "http://127.0.0.1:$recv_port/fail")" \
  "$(target "http://127.0.0.1:$recv_port/gone")" "$(target "http://127.0.0.1:$dead_port/hook")")
status=$(curl -s -o "$work/policy.out" -w '%{http_code}' -u "admin:$password" \
  -H 'Content-Type: application/json' -d "$policy" "$api/api/v2.0/projects/library/webhook/policies")
[ "$status" = 201 ] || { log "creating the policy answered $status: $(cat "$work/policy.out")"; exit 1; }

event() {
  printf '{"type":"%s","occur_at":%s,"operator":"admin","event_data":{"resources":[{"digest":"sha256:%064d","tag":"v%s","resource_url":"localhost/library/alpine:v%s"}],"repository":{"name":"alpine","namespace":"library","repo_full_name":"library/alpine","repo_type":"private"}}}' \
    "$1" "$(date +%s)" "$2" "$2" "$2"
}
ingest() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$1" "$api/api/v1/events"; }
sent=0
for i in $(seq 1 20); do
  [ "$(ingest "$(event PUSH_ARTIFACT "$i")")" = 202 ] || { log "ingest of event $i was refused"; exit 1; }
  sent=$((sent + 1))
done
for i in $(seq 21 5 40); do # arrays of five
  batch="[$(event PUSH_ARTIFACT "$i"),$(event DELETE_ARTIFACT "$((i + 1))"),$(event PUSH_ARTIFACT "$((i + 2))"),$(event PUSH_ARTIFACT "$((i + 3))"),$(event PUSH_ARTIFACT "$((i + 4))")]"
  [ "$(ingest "$batch")" = 202 ] || { log "ingest of batch $i was refused"; exit 1; }
  sent=$((sent + 5))
done
# A few refusals, so the error panel has something to show.
curl -s -o /dev/null -H 'Authorization: Bearer wrong' -H 'Content-Type: application/json' -d '{}' "$api/api/v1/events"
curl -s -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{' "$api/api/v1/events"

wait_for 60 "deliveries, retries and dead letters to reach Prometheus" has_data \
  'sum(regrelay_deliveries_total{outcome="delivered"}) > 0 and sum(regrelay_delivery_retries_scheduled_total) > 0 and sum(regrelay_dead_letters_total{reason="attempts_exhausted"}) > 0 and max(regrelay_dead_letter_queue_depth) > 0'
sleep 3 # a few more scrapes

export PROM="$prom" PENDING_PANELS
python3 - deploy/grafana/regrelay.json deploy/prometheus/regrelay-alerts.yaml docs/operations.md <<'PY'
import json, os, re, sys, urllib.parse, urllib.request
import yaml

prom, pending = os.environ["PROM"], set(os.environ["PENDING_PANELS"].split("|"))
dash = json.load(open(sys.argv[1]))
alerts = [r for g in yaml.safe_load(open(sys.argv[2]))["groups"] for r in g["rules"]]
docs = open(sys.argv[3]).read()
problems, lines = [], []

def substitute(expr):
    # Grafana's built-in intervals, then the dashboard's own variables (every value: "All").
    for name, value in (("__rate_interval", "30s"), ("__interval", "5s"), ("__range", "1m")):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return re.sub(r"\$\{?(job|instance)\}?", ".*", expr)

def query(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as e:
        answer = json.load(e)
    if answer.get("status") != "success":
        return None, answer.get("error", "no answer")
    return answer["data"]["result"], None

def nonzero(result):
    return any(s["value"][1] not in ("0", "NaN") for s in result)

# Variables: `label_values(metric{...}, label)` is Grafana's; its PromQL equivalent must have data.
for var in dash["templating"]["list"]:
    if var["type"] != "query":
        continue
    text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
    if not m:
        problems.append(f"variable {var['name']}: not label_values(...): {text}")
        continue
    result, error = query(f"count by ({m.group(2)}) ({substitute(m.group(1))})")
    if error or not result:
        problems.append(f"variable {var['name']}: {error or 'no values'} ({text})")
    else:
        lines.append(f"variable {var['name']}: {', '.join(s['metric'].get(m.group(2), '?') for s in result)}")

panels = [p for p in dash["panels"] if p["type"] != "row"]
panels += [q for p in dash["panels"] if p["type"] == "row" for q in p.get("panels", [])]
for p in panels:
    title = p["title"]
    if p.get("datasource", {}).get("uid") != "${datasource}" or any(
            t.get("datasource", {}).get("uid") != "${datasource}" for t in p["targets"]):
        problems.append(f"panel {title!r}: datasource is not ${{datasource}}")
    if not p.get("description"):
        problems.append(f"panel {title!r}: no description (the question it answers)")
    if f"| {title} |" not in docs:
        problems.append(f"panel {title!r}: not in the docs/operations.md Dashboard table")
    series, shown = 0, False
    for t in p["targets"]:
        result, error = query(substitute(t["expr"]))
        if error:
            problems.append(f"panel {title!r} query {t['refId']}: {error}")
            continue
        series += len(result)
        shown |= nonzero(result)
    if title in pending:
        if series:
            problems.append(f"panel {title!r} has data now: take it out of PENDING_PANELS")
        else:
            lines.append(f"panel {title}: empty (pending: metric not exported yet)")
    elif not series:
        problems.append(f"panel {title!r}: every query returned an empty result")
    else:
        lines.append(f"panel {title}: {series} series" + ("" if shown else " (all zero)"))

for r in alerts:
    result, error = query(r["expr"])
    if error:
        problems.append(f"alert {r['alert']}: {error}")
    else:
        labels = sorted({", ".join(f"{k}={v}" for k, v in s["metric"].items()) for s in result})
        state = f"true now ({'; '.join(l for l in labels if l) or 'no labels'})" if result else "quiet"
        lines.append(f"alert {r['alert']}: parses, {state}")

print("\n".join("dashboard:   " + l for l in lines), file=sys.stderr)
if problems:
    sys.exit("dashboard: FAILED\n  " + "\n  ".join(problems))
print(f"dashboard: {len(panels)} panels and {len(alerts)} alerts checked against Prometheus", file=sys.stderr)
PY
ok=true
log "sent $sent events; every query parses, every panel has data (pending: ${PENDING_PANELS//|/, })"
