{{/*
The api and consumer Deployments, HorizontalPodAutoscalers and PodDisruptionBudgets share one
shape; each is rendered from here with (dict "root" $ "component" "api" "role" .Values.api).
*/}}

{{- define "regrelay.deployment" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $component := .component }}
{{- $ctx := dict "root" $root "component" $component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "regrelay.fullname" $root }}-{{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "regrelay.labels" $ctx | nindent 4 }}
spec:
  {{- /* An HPA (the chart's, or KEDA's from consumer.keda) owns the count: an upgrade would reset it. */}}
  {{- if not (or $role.autoscaling.enabled (dig "keda" "enabled" false $role)) }}
  replicas: {{ $role.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $role.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "regrelay.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "regrelay.labels" $ctx | nindent 8 }}
        {{- with $role.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when the configuration (or the chart-managed Secret) changes.
        checksum/config: {{ include "regrelay.configEnv" $root | sha256sum }}
        {{- if not $root.Values.existingSecret }}
        checksum/secret: {{ include "regrelay.secretData" $root | sha256sum }}
        {{- end }}
        {{- with include "regrelay.scrapeAnnotations" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $role.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "regrelay.podCommon" $root | nindent 6 }}
      serviceAccountName: {{ include "regrelay.serviceAccountName" $root }}
      terminationGracePeriodSeconds: {{ $role.terminationGracePeriodSeconds }}
      {{- with $role.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "regrelay.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", "--role", {{ $component | quote }}]
          ports:
            - name: http
              containerPort: {{ $root.Values.containerPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "regrelay.fullname" $root }}
          {{- $secretEnv := include "regrelay.secretEnv" $ctx | trim }}
          {{- $extraEnv := concat ($root.Values.extraEnv | default list) ($role.extraEnv | default list) }}
          {{- if or $secretEnv $extraEnv }}
          env:
            {{- with $secretEnv }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          {{- if $role.preStopSleepSeconds }}
          lifecycle:
            preStop:
              exec:
                # Endpoints drop a terminating pod asynchronously; keep accepting until they have.
                command: ["/bin/sleep", {{ include "regrelay.scalar" $role.preStopSleepSeconds | quote }}]
          {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $role.startupProbe | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $role.livenessProbe | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            {{- toYaml $role.readinessProbe | nindent 12 }}
          {{- with $role.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $root.Values.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with include "regrelay.secretFilesMount" $ctx | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $root.Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        # The root filesystem is read-only; a small scratch /tmp for anything that insists on one.
        - name: tmp
          emptyDir:
            sizeLimit: 16Mi
        {{- with include "regrelay.secretFilesVolume" $ctx | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $root.Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $role.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{- define "regrelay.hpa" -}}
{{- $root := .root }}
{{- $auto := .role.autoscaling }}
{{- $ctx := dict "root" $root "component" .component }}
{{- if not (or $auto.targetCPUUtilizationPercentage $auto.targetMemoryUtilizationPercentage $auto.metrics) }}
{{- fail (printf "%s.autoscaling.enabled needs a metric: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or metrics" .component) }}
{{- end }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "regrelay.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "regrelay.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "regrelay.fullname" $root }}-{{ .component }}
  minReplicas: {{ $auto.minReplicas }}
  maxReplicas: {{ $auto.maxReplicas }}
  metrics:
    {{- with $auto.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $auto.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $auto.metrics }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $auto.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "regrelay.pdb" -}}
{{- $root := .root }}
{{- $pdb := .role.podDisruptionBudget }}
{{- $ctx := dict "root" $root "component" .component }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "regrelay.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "regrelay.labels" $ctx | nindent 4 }}
spec:
  {{- if not (include "regrelay.isUnset" $pdb.minAvailable) }}
  minAvailable: {{ $pdb.minAvailable }}
  {{- else if not (include "regrelay.isUnset" $pdb.maxUnavailable) }}
  maxUnavailable: {{ $pdb.maxUnavailable }}
  {{- else }}
  {{- fail (printf "%s.podDisruptionBudget.enabled needs minAvailable or maxUnavailable" .component) }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "regrelay.selectorLabels" $ctx | nindent 6 }}
{{- end }}
