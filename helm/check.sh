#!/usr/bin/env bash
# Checks the Helm chart without a cluster:
#   1. helm lint --strict with each helm/regrelay/ci/*-values.yaml;
#   2. helm template with each of them, and the values that must fail, with their messages;
#   3. kubernetes-validate --strict on every rendered manifest, per Kubernetes version
#      (the ServiceMonitor, PrometheusRule, KEDA ScaledObject and TriggerAuthentication are CRDs
#      with no schema offline: the ServiceMonitor and the KEDA objects are checked for shape, the
#      PrometheusRule for equality with deploy/prometheus/regrelay-alerts.yaml);
#   4. every key of docs/configuration.md is in values.yaml (config: or secrets:), and the
#      defaults under config: equal crates/regrelay/src/config.default.toml's.
#
# Usage: helm/check.sh
#   HELM=/path/to/helm           helm binary (default: helm on PATH)
#   KUBERNETES_VALIDATE=...      kubernetes-validate (default: on PATH; pip install kubernetes-validate)
#   K8S_VERSIONS="1.25.0 1.35.0" Kubernetes versions to validate against
set -euo pipefail
cd "$(dirname "$0")/.."

HELM=${HELM:-helm}
KV=${KUBERNETES_VALIDATE:-kubernetes-validate}
K8S_VERSIONS=${K8S_VERSIONS:-"1.25.0 1.35.0"}
CHART=helm/regrelay
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

step() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

step "tools: helm $("$HELM" version --short 2>/dev/null || die "no helm at '$HELM' (set HELM)"), kubernetes-validate $("$KV" --version 2>/dev/null || die "no kubernetes-validate (pip install kubernetes-validate)")"

step "helm lint --strict"
for values in "$CHART"/ci/*-values.yaml; do
    "$HELM" lint --strict "$CHART" -f "$values" >"$OUT/lint.log" 2>&1 \
        || { cat "$OUT/lint.log"; die "helm lint with $values"; }
    echo "ok   lint -f $values"
done

step "helm template (must render)"
for values in "$CHART"/ci/*-values.yaml; do
    name=$(basename "$values" -values.yaml)
    "$HELM" template regrelay "$CHART" --namespace regrelay -f "$values" >"$OUT/$name.yaml"
    echo "ok   template -f $values ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
done

step "helm template (must fail, naming the value to set)"
expect_fail() {
    local pattern=$1
    shift
    if "$HELM" template regrelay "$CHART" "$@" >/dev/null 2>"$OUT/err.log"; then
        die "rendered, but should have failed with '$pattern': $*"
    fi
    grep -q -- "$pattern" "$OUT/err.log" || { cat "$OUT/err.log"; die "failed without '$pattern': $*"; }
    echo "ok   fails with '$pattern': ${*:-(chart defaults)}"
}
DEFAULT=(-f "$CHART/ci/default-values.yaml")
expect_fail "secrets.ingest_token is required"
expect_fail "secrets.admin_password is required" --set secrets.ingest_token=abc123token
expect_fail "secrets.amqp_url is required" --set secrets.ingest_token=abc123token --set secrets.admin_password=pw-abc
expect_fail "is a secret and would land in a ConfigMap" "${DEFAULT[@]}" --set config.database_url=postgres://x@y/z
expect_fail "set together with existingSecret" --set existingSecret=creds --set secrets.ingest_token=abc123token
expect_fail "terminationGracePeriodSeconds" "${DEFAULT[@]}" --set config.shutdown_timeout=1m
expect_fail "config.listen" "${DEFAULT[@]}" --set config.listen=0.0.0.0:9000
expect_fail "additional properties 'ingest_tokn' not allowed" "${DEFAULT[@]}" --set secrets.ingest_tokn=x
expect_fail "secrets_key" "${DEFAULT[@]}" --set secrets.secrets_key=k1:c2hvcnQ=
KEDA=(-f "$CHART/ci/keda-values.yaml")
expect_fail "consumer.keda.enabled and consumer.autoscaling.enabled are both true" "${KEDA[@]}" --set consumer.autoscaling.enabled=true
expect_fail "consumer.keda.enabled and consumer.autoscaling.enabled are both true" -f "$CHART/ci/all-on-values.yaml" --set consumer.keda.enabled=true --set consumer.keda.managementUrlSecret.name=mgmt
expect_fail "consumer.keda.enabled needs consumer.keda.managementUrlSecret.name" "${DEFAULT[@]}" --set consumer.keda.enabled=true
expect_fail "are both set" "${KEDA[@]}" --set consumer.keda.authenticationRef.name=other
expect_fail "consumer.keda.minReplicaCount (5) is larger" "${KEDA[@]}" --set consumer.keda.minReplicaCount=5 --set consumer.keda.maxReplicaCount=3
# Without the api role, no token is needed.
"$HELM" template regrelay "$CHART" --set api.enabled=false \
    --set secrets.amqp_url=amqp://u:p@mq:5672/%2f --set secrets.database_url=postgres://u:p@db/r >/dev/null
echo "ok   consumer-only renders without ingest_token and admin_password"

step "alerts: the chart's copy is deploy/prometheus/regrelay-alerts.yaml"
cmp -s deploy/prometheus/regrelay-alerts.yaml "$CHART/files/regrelay-alerts.yaml" \
    || die "$CHART/files/regrelay-alerts.yaml differs from deploy/prometheus/regrelay-alerts.yaml: cp the latter over the former"
grep -q '^kind: PrometheusRule' "$OUT/all-on.yaml" || die "all-on values render no PrometheusRule"
! grep -q '^kind: PrometheusRule' "$OUT/default.yaml" || die "the PrometheusRule is on by default"
echo "ok   identical copy; rendered with prometheusRule.enabled only"

step "manifests: no secret in a ConfigMap; split for validation"
python3 - "$OUT" <<'EOF'
import os, sys, yaml
out = sys.argv[1]
secret_env = {"REGRELAY_" + k.upper() for k in
              ("ingest_token", "admin_password", "api_token", "amqp_url", "database_url",
               "secrets_key")}
os.makedirs(f"{out}/docs", exist_ok=True)
os.makedirs(f"{out}/crd", exist_ok=True)
for name in sorted(f for f in os.listdir(out) if f.endswith(".yaml")):
    for i, doc in enumerate(d for d in yaml.safe_load_all(open(f"{out}/{name}")) if d):
        kind = doc["kind"]
        if kind == "ConfigMap":
            leaked = secret_env & set(doc.get("data", {}))
            assert not leaked, f"{name}: ConfigMap holds secrets {leaked}"
            assert all(isinstance(v, str) for v in doc["data"].values()), f"{name}: non-string data"
        if kind in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False, f"{name}: {kind} mounts a token"
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"], name
            for e in (e for c in pod["containers"] for e in c.get("env", [])):
                assert e["name"] not in secret_env or "valueFrom" in e, f"{name}: {e['name']} inline"
            # secretFiles: each REGRELAY_<KEY>_FILE names a file of a mounted Secret volume.
            secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
            for c in pod["containers"]:
                for e in (e for e in c.get("env", []) if e["name"].removesuffix("_FILE") in secret_env
                          and e["name"].endswith("_FILE")):
                    key = e["name"].removesuffix("_FILE")
                    assert key not in {x["name"] for x in c.get("env", [])}, f"{name}: {key} twice"
                    mounts = [m for m in c.get("volumeMounts", []) if m["name"] in secret_volumes
                              and e["value"] == f"{m['mountPath'].rstrip('/')}/{key[len('REGRELAY_'):].lower()}"]
                    assert mounts, f"{name}: {e['name']}={e['value']} is not a mounted secret file"
                    items = secret_volumes[mounts[0]["name"]]["items"]
                    assert key[len("REGRELAY_"):].lower() in {i["path"] for i in items}, f"{name}: {key} not mounted"
        target = "crd" if doc["apiVersion"].startswith(("monitoring.coreos.com/", "keda.sh/")) else "docs"
        with open(f"{out}/{target}/{name[:-5]}-{i:02d}-{kind}.yaml", "w") as f:
            yaml.safe_dump(doc, f)
        if kind == "ServiceMonitor":
            spec = doc["spec"]
            assert spec["selector"]["matchLabels"] and spec["endpoints"][0]["port"] == "http", name
        if kind == "PrometheusRule":
            # The chart's rules are exactly deploy/prometheus/regrelay-alerts.yaml's.
            alerts = yaml.safe_load(open("deploy/prometheus/regrelay-alerts.yaml"))
            assert doc["spec"]["groups"] == alerts["groups"], f"{name}: PrometheusRule differs from the alerts file"
print("ok   no secret values in ConfigMaps or inline env; security settings present")

# KEDA: a ScaledObject exactly when the ci values turn consumer.keda on, aimed at the rendered
# consumer Deployment, with one http QueueLength trigger per work queue of the configured prefix,
# each authenticated by a rendered TriggerAuthentication or the one named in the values.
chart_values = yaml.safe_load(open("helm/regrelay/values.yaml"))
scaled = 0
for name in sorted(f for f in os.listdir(out) if f.endswith(".yaml")):
    ci = yaml.safe_load(open(f"helm/regrelay/ci/{name[:-5]}-values.yaml")) or {}
    keda = {**chart_values["consumer"]["keda"], **(ci.get("consumer", {}).get("keda") or {})}
    prefix = (ci.get("config") or {}).get("queue_prefix") or chart_values["config"]["queue_prefix"]
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{name}")) if d]
    objects = [d for d in docs if d["kind"] == "ScaledObject"]
    if not keda["enabled"]:
        assert not objects, f"{name}: a ScaledObject although consumer.keda.enabled is false"
        assert not [d for d in docs if d["kind"] == "TriggerAuthentication"], f"{name}: TriggerAuthentication without KEDA"
        continue
    assert len(objects) == 1 and objects[0]["apiVersion"] == "keda.sh/v1alpha1", f"{name}: {len(objects)} ScaledObjects"
    spec = objects[0]["spec"]
    consumers = [d for d in docs if d["kind"] == "Deployment"
                 and d["metadata"]["labels"]["app.kubernetes.io/component"] == "consumer"]
    assert len(consumers) == 1, f"{name}: {len(consumers)} consumer Deployments"
    assert "replicas" not in consumers[0]["spec"], f"{name}: consumer replicas set while KEDA scales them"
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == consumers[0]["metadata"]["name"], \
        f"{name}: scaleTargetRef {target} is not the consumer Deployment {consumers[0]['metadata']['name']}"
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
                and d["spec"]["scaleTargetRef"]["name"] == target["name"]], f"{name}: a chart HPA on the KEDA target"
    assert spec["minReplicaCount"] == keda["minReplicaCount"] and spec["maxReplicaCount"] == keda["maxReplicaCount"], name
    triggers = spec["triggers"]
    queues = sorted(t["metadata"]["queueName"] for t in triggers)
    assert queues == sorted([f"{prefix}.events", f"{prefix}.deliveries"]), f"{name}: triggers on {queues}, prefix {prefix}"
    auths = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] == "TriggerAuthentication"}
    for t in triggers:
        m = t["metadata"]
        assert t["type"] == "rabbitmq" and m["protocol"] == "http" and m["mode"] == "QueueLength", f"{name}: {t}"
        assert m.get("excludeUnacknowledged", "false") == "false", f"{name}: {m['queueName']} excludes unacked"
        role = m["queueName"][len(prefix) + 1:]
        assert m["value"] == str(keda["queues"][role]["targetValue"]), f"{name}: {m['queueName']} value {m['value']}"
        assert all(isinstance(v, str) for v in m.values()), f"{name}: trigger metadata must be strings: {m}"
        assert "host" not in m and "password" not in m, f"{name}: a credential in trigger metadata"
        ref = t["authenticationRef"]
        key = (ref.get("kind", "TriggerAuthentication"), ref["name"])
        if keda["managementUrlSecret"]["name"]:
            assert key in auths, f"{name}: authenticationRef {key} is not a rendered TriggerAuthentication"
            refs = auths[key]["spec"]["secretTargetRef"]
            assert [(r["parameter"], r["name"], r["key"]) for r in refs] == \
                [("host", keda["managementUrlSecret"]["name"], keda["managementUrlSecret"]["key"])], f"{name}: {refs}"
        else:
            assert not auths, f"{name}: TriggerAuthentication rendered although authenticationRef names one"
            assert key == (keda["authenticationRef"]["kind"], keda["authenticationRef"]["name"]), f"{name}: {key}"
    scaled += 1
assert scaled, "no ci values file turns consumer.keda on"
print(f"ok   KEDA ScaledObject in {scaled} renders only (consumer Deployment, {{events,deliveries}} via http QueueLength, auth ref resolved)")
EOF

step "kubernetes-validate --strict"
for version in $K8S_VERSIONS; do
    "$KV" --strict --quiet -k "$version" "$OUT"/docs/*.yaml || die "kubernetes-validate against $version"
    echo "ok   $(ls "$OUT"/docs | wc -l) manifests valid against Kubernetes $version"
done
echo "skip $(ls "$OUT"/crd | wc -l) ServiceMonitor/PrometheusRule/ScaledObject/TriggerAuthentication manifest(s): CRDs, no schema offline (checked above)"

step "configuration keys: docs/configuration.md and config.default.toml against values.yaml"
python3 - <<'EOF'
import re, sys, tomllib, yaml
doc_keys = [m.group(1) for m in (re.match(r"\| `([a-z_]+)`", l) for l in open("docs/configuration.md")) if m]
toml_path = "crates/regrelay/src/config.default.toml"
defaults = tomllib.load(open(toml_path, "rb"))
# Keys without a default appear in that file as comments: "# ingest_token = ...".
commented = [m.group(1) for m in (re.match(r"#\s*([a-z_]+)\s*=", l) for l in open(toml_path)) if m]
values = yaml.safe_load(open("helm/regrelay/values.yaml"))
config, secrets = values["config"], values["secrets"]
secret_keys = {"ingest_token", "admin_password", "api_token", "amqp_url", "database_url",
               "secrets_key"}
problems = []
known = set(doc_keys) | set(defaults) | set(commented)
for key in sorted(known):
    section = "secrets" if key in secret_keys else "config"
    if key not in values[section]:
        problems.append(f"{key}: not under {section}: in values.yaml")
for key in config:
    if key not in known:
        problems.append(f"config.{key}: neither in docs/configuration.md nor in {toml_path}")
undocumented = sorted(k for k in set(defaults) | set(commented) if k not in doc_keys)
defaults.update({"max_attempts": 10, "http_timeout": "3s"})  # documented defaults, not in the file
compared = 0
for key, default in defaults.items():
    if key in secret_keys or key == "listen":
        continue  # secrets have no default in the chart; the chart sets listen
    compared += 1
    if config.get(key) != default:
        problems.append(f"config.{key}: {config.get(key)!r} in values.yaml, {default!r} in {toml_path}")
if config.get("allow_private_targets") is not False:
    problems.append("config.allow_private_targets must default to false")
if problems:
    sys.exit("FAIL:\n  " + "\n  ".join(problems))
print(f"ok   {len(known)} keys (docs table and defaults file) in values.yaml; {compared} defaults equal the file's")
if undocumented:
    print(f"note in {toml_path} but not in docs/configuration.md: {', '.join(undocumented)}")
EOF

step "all checks passed"
