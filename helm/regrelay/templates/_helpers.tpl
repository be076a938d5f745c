{{/*
Helpers of the regrelay chart.
Names and labels follow `helm create`; the rest turns `config:` into REGRELAY_* variables, wires the
secret keys to the roles that need them, and checks values that would only fail at run time.
*/}}

{{/* The chart name, overridable. */}}
{{- define "regrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: <release>-<chart>, or <release> when it contains the chart name. */}}
{{- define "regrelay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* <chart>-<version>, for the helm.sh/chart label. */}}
{{- define "regrelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods of one component. Argument: (dict "root" $ "component" "api"). */}}
{{- define "regrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regrelay.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Every label of a resource. Argument: (dict "root" $ "component" "api"); component may be "". */}}
{{- define "regrelay.labels" -}}
helm.sh/chart: {{ include "regrelay.chart" .root }}
{{ include "regrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ include "regrelay.imageTag" .root | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: regrelay
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "regrelay.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString }}
{{- end }}

{{/* The image reference: repository@digest when a digest is given, else repository:tag. */}}
{{- define "regrelay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "regrelay.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of the api and consumer pods. */}}
{{- define "regrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "regrelay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of the migration hook Job, which runs before the chart's own resources exist. */}}
{{- define "regrelay.migrationsServiceAccountName" -}}
{{- if .Values.migrations.serviceAccountName }}
{{- .Values.migrations.serviceAccountName }}
{{- else if and (not .Values.serviceAccount.create) .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- "default" }}
{{- end }}
{{- end }}

{{/* The six secret keys of docs/configuration.md, in one place. */}}
{{- define "regrelay.secretKeys" -}}
{{- list "ingest_token" "admin_password" "api_token" "amqp_url" "database_url" "secrets_key" | toJson }}
{{- end }}

{{/* config.queue_prefix, else the binary's default ("regrelay"): the prefix of every queue name. */}}
{{- define "regrelay.queuePrefix" -}}
{{- if include "regrelay.isUnset" .Values.config.queue_prefix }}
{{- "regrelay" }}
{{- else }}
{{- .Values.config.queue_prefix | toString | trim }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: existingSecret, else the chart-managed one. */}}
{{- define "regrelay.secretName" -}}
{{- .Values.existingSecret | default (include "regrelay.fullname" .) }}
{{- end }}

{{/* Whether a value is "unset": null, or a string that is empty after trimming. false and 0 are set. */}}
{{- define "regrelay.isUnset" -}}
{{- if or (kindIs "invalid" .) (and (kindIs "string" .) (eq (trim .) "")) }}true{{ end }}
{{- end }}

{{/*
A scalar as text for an environment variable. Helm reads every number of values.yaml as float64,
which toString would print as 1.048576e+06; toJson prints 1048576 (and 2.0 as 2, which regrelay
reads as 2.0).
*/}}
{{- define "regrelay.scalar" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- toJson . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* REGRELAY_LISTEN: config.listen when given (its port must be containerPort), else 0.0.0.0:<containerPort>. */}}
{{- define "regrelay.listen" -}}
{{- $port := include "regrelay.scalar" .Values.containerPort }}
{{- if include "regrelay.isUnset" .Values.config.listen }}
{{- printf "0.0.0.0:%s" $port }}
{{- else }}
{{- $listen := .Values.config.listen | toString | trim }}
{{- if not (hasSuffix (printf ":%s" $port) $listen) }}
{{- fail (printf "config.listen %q must end with :%s, the containerPort the probes and Services use; leave config.listen empty to get 0.0.0.0:%s" $listen $port $port) }}
{{- end }}
{{- $listen }}
{{- end }}
{{- end }}

{{/*
The non-secret configuration as a YAML map of REGRELAY_<KEY> to text: every key of `config:` that
is not unset, plus REGRELAY_LISTEN. Fails when a secret key was put under `config:`.
*/}}
{{- define "regrelay.configEnv" -}}
{{- $secretKeys := include "regrelay.secretKeys" . | fromJsonArray }}
{{- $env := dict }}
{{- range $key, $value := .Values.config }}
{{- if has $key $secretKeys }}
{{- if not (include "regrelay.isUnset" $value) }}
{{- fail (printf "config.%s is a secret and would land in a ConfigMap: set secrets.%s (or put it in existingSecret) instead" $key $key) }}
{{- end }}
{{- else if and (ne $key "listen") (not (include "regrelay.isUnset" $value)) }}
{{- $_ := set $env (printf "REGRELAY_%s" (upper $key)) (include "regrelay.scalar" $value) }}
{{- end }}
{{- end }}
{{- $_ := set $env "REGRELAY_LISTEN" (include "regrelay.listen" .) }}
{{- toYaml $env }}
{{- end }}

{{/*
Checks that would otherwise only fail when a pod starts. Included by every template that depends on
them, so `helm template` and `helm install` stop with a message that names the value to set.
*/}}
{{- define "regrelay.validate" -}}
{{- $secretKeys := include "regrelay.secretKeys" . | fromJsonArray }}
{{- if .Values.existingSecret }}
{{- range $key := $secretKeys }}
{{- if not (include "regrelay.isUnset" (get $.Values.secrets $key)) }}
{{- fail (printf "secrets.%s is set together with existingSecret %q: put it in that Secret (key existingSecretKeys.%s) and leave secrets.%s empty" $key $.Values.existingSecret $key $key) }}
{{- end }}
{{- end }}
{{- if .Values.api.enabled }}
{{- if not .Values.existingSecretKeys.ingest_token }}
{{- fail "existingSecretKeys.ingest_token is empty: the api role refuses to start without an ingest token; name the key of existingSecret that holds it" }}
{{- end }}
{{- if not .Values.existingSecretKeys.admin_password }}
{{- fail "existingSecretKeys.admin_password is empty: the api role refuses to start without an administrator password; name the key of existingSecret that holds it" }}
{{- end }}
{{- end }}
{{- else if .Values.api.enabled }}
{{- if include "regrelay.isUnset" .Values.secrets.ingest_token }}
{{- fail "secrets.ingest_token is required: the api role refuses to start without the bearer token producers send to POST /api/v1/events. Set secrets.ingest_token (e.g. --set secrets.ingest_token=$(openssl rand -hex 32)) or existingSecret=<name of a Secret with key ingest_token>" }}
{{- end }}
{{- if include "regrelay.isUnset" .Values.secrets.admin_password }}
{{- fail "secrets.admin_password is required: the api role refuses to start without the policy API administrator's password. Set secrets.admin_password or existingSecret=<name of a Secret with key admin_password>" }}
{{- end }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- if include "regrelay.isUnset" .Values.secrets.amqp_url }}
{{- fail "secrets.amqp_url is required: the built-in default (amqp://guest:guest@127.0.0.1:5672/%2f) reaches no broker from a pod. Set secrets.amqp_url (amqp:// or amqps://) or existingSecret=<name of a Secret with key amqp_url>" }}
{{- end }}
{{- if include "regrelay.isUnset" .Values.secrets.database_url }}
{{- fail "secrets.database_url is required: the built-in default (postgres://postgres@127.0.0.1:5432/regrelay) reaches no database from a pod. Set secrets.database_url or existingSecret=<name of a Secret with key database_url>" }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.consumer.enabled (not .Values.consumer.metricsService.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs consumer.metricsService.enabled: the ServiceMonitor finds the consumers through that Service" }}
{{- end }}
{{- $keda := .Values.consumer.keda }}
{{- if and $keda.enabled .Values.consumer.autoscaling.enabled }}
{{- fail "consumer.keda.enabled and consumer.autoscaling.enabled are both true: KEDA's ScaledObject creates its own HorizontalPodAutoscaler for the consumer Deployment, and two autoscalers would fight over its replicas. Turn one off (set consumer.autoscaling.enabled=false to scale on queue depth with KEDA)" }}
{{- end }}
{{- if $keda.enabled }}
{{- if and $keda.managementUrlSecret.name $keda.authenticationRef.name }}
{{- fail (printf "consumer.keda.managementUrlSecret.name (%s) and consumer.keda.authenticationRef.name (%s) are both set: name the Secret with the management API URL (the chart renders a TriggerAuthentication for it) or an existing TriggerAuthentication, not both" $keda.managementUrlSecret.name $keda.authenticationRef.name) }}
{{- end }}
{{- if not (or $keda.managementUrlSecret.name $keda.authenticationRef.name) }}
{{- fail "consumer.keda.enabled needs consumer.keda.managementUrlSecret.name (a Secret in the release namespace whose key consumer.keda.managementUrlSecret.key holds the management API URL, https://<user>:<password>@<host>:15671/<vhost>) or consumer.keda.authenticationRef.name (an existing TriggerAuthentication setting `host`)" }}
{{- end }}
{{- if and $keda.managementUrlSecret.name (not $keda.managementUrlSecret.key) }}
{{- fail "consumer.keda.managementUrlSecret.key is empty: name the key of the Secret that holds the management API URL" }}
{{- end }}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) }}
{{- fail (printf "consumer.keda.minReplicaCount (%d) is larger than consumer.keda.maxReplicaCount (%d)" (int $keda.minReplicaCount) (int $keda.maxReplicaCount)) }}
{{- end }}
{{- end }}
{{- range $component := list "api" "consumer" }}
{{- $role := get $.Values $component }}
{{- $shutdown := include "regrelay.durationSeconds" $.Values.config.shutdown_timeout }}
{{- if and $role.enabled $shutdown }}
{{- $floor := add (int $shutdown) (int $role.preStopSleepSeconds) }}
{{- if le (int $role.terminationGracePeriodSeconds) $floor }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be larger than %s.preStopSleepSeconds + config.shutdown_timeout (%d s), or pods are killed before they drain; %d is safe" $component (int $role.terminationGracePeriodSeconds) $component $floor (add (mul 2 (int $shutdown)) (int $role.preStopSleepSeconds) 5)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Whole seconds (rounded up) of a simple duration such as "15s", "2m", "1500ms", "1h"; empty when the
text is another form (humantime accepts more), in which case the grace-period check is skipped.
*/}}
{{- define "regrelay.durationSeconds" -}}
{{- $d := . | default "15s" | toString | trim }}
{{- if regexMatch "^[0-9]+ms$" $d }}
{{- $ms := trimSuffix "ms" $d | int }}
{{- div (add $ms 999) 1000 }}
{{- else if regexMatch "^[0-9]+(s|sec|secs|second|seconds)$" $d }}
{{- regexFind "^[0-9]+" $d | int }}
{{- else if regexMatch "^[0-9]+(m|min|mins|minute|minutes)$" $d }}
{{- mul (regexFind "^[0-9]+" $d | int) 60 }}
{{- else if regexMatch "^[0-9]+(h|hr|hrs|hour|hours)$" $d }}
{{- mul (regexFind "^[0-9]+" $d | int) 3600 }}
{{- end }}
{{- end }}

{{/*
The secret keys a component ("api", "consumer" or "migrations") reads, as a JSON list of
{"key": <regrelay key>, "secretKey": <key in the Secret>}: the api every key; consumers only the
broker, the database and the secrets key (they decrypt the policies' credentials); migrations only
the database (`regrelay migrate` stores no credential). Keys that are not set are left out.
*/}}
{{- define "regrelay.componentSecretKeys" -}}
{{- $root := .root }}
{{- $keys := list "amqp_url" "database_url" "secrets_key" }}
{{- if eq .component "api" }}
{{- $keys = list "ingest_token" "admin_password" "api_token" "amqp_url" "database_url" "secrets_key" }}
{{- else if eq .component "migrations" }}
{{- $keys = list "database_url" }}
{{- end }}
{{- $out := list }}
{{- range $key := $keys }}
{{- if $root.Values.existingSecret }}
{{- $secretKey := get $root.Values.existingSecretKeys $key }}
{{- if $secretKey }}
{{- $out = append $out (dict "key" $key "secretKey" $secretKey) }}
{{- end }}
{{- else if not (include "regrelay.isUnset" (get $root.Values.secrets $key)) }}
{{- $out = append $out (dict "key" $key "secretKey" $key) }}
{{- end }}
{{- end }}
{{- $out | toJson }}
{{- end }}

{{/* The Secret a component reads: existingSecret, else .secretName (the migration hook's), else the chart's. */}}
{{- define "regrelay.componentSecretName" -}}
{{- .root.Values.existingSecret | default .secretName | default (include "regrelay.secretName" .root) }}
{{- end }}

{{/*
Secret environment variables of a component: REGRELAY_<KEY> from a secretKeyRef, or with
secretFiles.enabled REGRELAY_<KEY>_FILE naming the key's file in the mounted Secret
(regrelay.secretFilesVolume).
*/}}
{{- define "regrelay.secretEnv" -}}
{{- $root := .root }}
{{- $secretName := include "regrelay.componentSecretName" . }}
{{- range $item := include "regrelay.componentSecretKeys" . | fromJsonArray }}
{{- if $root.Values.secretFiles.enabled }}
- name: REGRELAY_{{ upper $item.key }}_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" $root.Values.secretFiles.mountPath) $item.key | quote }}
{{- else }}
- name: REGRELAY_{{ upper $item.key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $item.secretKey }}
      {{- if and $root.Values.existingSecret (has $item.key (list "api_token" "secrets_key")) }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
With secretFiles.enabled: the volume of a component's secret keys (only those it reads, each file
named after its regrelay key) and its read-only mount. Both empty otherwise.
*/}}
{{- define "regrelay.secretFilesVolume" -}}
{{- $root := .root }}
{{- $items := include "regrelay.componentSecretKeys" . | fromJsonArray }}
{{- if and $root.Values.secretFiles.enabled $items }}
- name: secret-files
  secret:
    secretName: {{ include "regrelay.componentSecretName" . }}
    # 0440: readable by the pod's fsGroup (the image's group), nobody else.
    defaultMode: 288
    items:
      {{- range $item := $items }}
      - key: {{ $item.secretKey }}
        path: {{ $item.key }}
      {{- end }}
{{- end }}
{{- end }}

{{- define "regrelay.secretFilesMount" -}}
{{- if and .root.Values.secretFiles.enabled (include "regrelay.componentSecretKeys" . | fromJsonArray) }}
- name: secret-files
  mountPath: {{ .root.Values.secretFiles.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The chart-managed secret data: every secret key that is set. */}}
{{- define "regrelay.secretData" -}}
{{- $data := dict }}
{{- range $key := include "regrelay.secretKeys" . | fromJsonArray }}
{{- $value := get $.Values.secrets $key }}
{{- if not (include "regrelay.isUnset" $value) }}
{{- $_ := set $data $key (include "regrelay.scalar" $value) }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* The pod-level settings shared by every pod. */}}
{{- define "regrelay.podCommon" -}}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- /* Service links would put REGRELAY_*_SERVICE_HOST and friends into the environment, which
regrelay reads as configuration keys. */}}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations, when metrics.podAnnotations is on. */}}
{{- define "regrelay.scrapeAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "regrelay.scalar" .Values.containerPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
