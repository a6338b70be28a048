{{/* Chart name, overridable. */}}
{{- define "sentinel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. A release named like the chart is not repeated
("sentinel", not "sentinel-sentinel"). Kept to 63 characters for DNS labels.
*/}}
{{- define "sentinel.fullname" -}}
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

{{- define "sentinel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object; the component label is added per object. */}}
{{- define "sentinel.labels" -}}
helm.sh/chart: {{ include "sentinel.chart" . }}
{{ include "sentinel.selectorLabels" . }}
app.kubernetes.io/version: {{ include "sentinel.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sentinel
{{- end }}

{{/* Labels that identify the release; never change them, Deployment selectors are immutable. */}}
{{- define "sentinel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sentinel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of the server pods (not the migration Job or the test pod). */}}
{{- define "sentinel.serverSelectorLabels" -}}
{{ include "sentinel.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "sentinel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sentinel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sentinel.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest pins the image. */}}
{{- define "sentinel.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "sentinel.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The Secret holding the database URL; rendering stops with a clear message without it. */}}
{{- define "sentinel.databaseSecret" -}}
{{- required "database.existingSecret is required: create a Secret holding the PostgreSQL URL (kubectl create secret generic sentinel-db --from-literal=url=postgres://...) and pass --set database.existingSecret=sentinel-db" .Values.database.existingSecret }}
{{- end }}

{{/* EnvVar of the database URL, shared by the server and the migration Job. */}}
{{- define "sentinel.databaseEnv" -}}
- name: SENTINEL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sentinel.databaseSecret" . }}
      key: {{ required "database.existingSecretKey is required" .Values.database.existingSecretKey }}
{{- end }}

{{/* Seconds from SIGTERM to SIGKILL: above preStop sleep plus drain, checked when set by hand. */}}
{{- define "sentinel.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.config.drainTimeoutSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $floor) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than lifecycle.preStopSleepSeconds + config.drainTimeoutSeconds (%d), or the kubelet kills pods that are still draining" (int .Values.terminationGracePeriodSeconds) (int $floor)) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express. Included by the Deployment. */}}
{{- define "sentinel.validate" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor would scrape a port that is not served" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage)) }}
{{- fail "autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- $livenessBudget := mul (int .Values.probes.liveness.periodSeconds) (int .Values.probes.liveness.failureThreshold) }}
{{- if le (int $livenessBudget) (int .Values.config.drainTimeoutSeconds) }}
{{- fail (printf "probes.liveness periodSeconds x failureThreshold (%d s) must exceed config.drainTimeoutSeconds (%d s): the health service reports NOT_SERVING while draining" (int $livenessBudget) (int .Values.config.drainTimeoutSeconds)) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget needs minAvailable or maxUnavailable" }}
{{- end }}
{{- end }}
