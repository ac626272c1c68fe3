{{/* Names and the environment every feedrank container shares. */}}
{{- define "feedrank.fullname" -}}
{{- printf "%s-feedrank" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "feedrank.labels" -}}
app.kubernetes.io/name: feedrank
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "feedrank.selector" -}}
app.kubernetes.io/name: feedrank
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "feedrank.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{- define "feedrank.claim" -}}
{{ .Values.persistence.existingClaim | default (printf "%s-run" (include "feedrank.fullname" .)) }}
{{- end -}}

{{/* FEEDRANK_* settings every container gets (only settings feedrank/config.py defines:
an unknown FEEDRANK_ key is refused at start). No credential is a value here: the Redis
password comes from its Secret, each Kafka password from a mounted Secret file
(feedrank.kafkaCredentials). */}}
{{- define "feedrank.env" -}}
- name: FEEDRANK_PROFILE
  value: {{ .Values.settings.profile | quote }}
- name: FEEDRANK_PATHS__HOME
  value: {{ .Values.settings.runFolder | quote }}
- name: FEEDRANK_KAFKA__HOST
  value: {{ .Values.kafka.host | quote }}
- name: FEEDRANK_KAFKA__PORT
  value: {{ .Values.kafka.port | quote }}
- name: FEEDRANK_KAFKA__SECURITY
  value: {{ .Values.kafka.security | quote }}
{{- if eq .Values.kafka.security "scram" }}
# Strimzi names each SCRAM user after its KafkaUser: <fullname>-<principal>.
- name: FEEDRANK_KAFKA__USERNAME_PREFIX
  value: {{ printf "%s-" (include "feedrank.fullname" .) | quote }}
- name: FEEDRANK_KAFKA__PASSWORD_DIR
  value: {{ .Values.kafka.passwordDir | quote }}
{{- end }}
- name: FEEDRANK_REDIS__HOST
  value: {{ .Values.redis.host | quote }}
- name: FEEDRANK_REDIS__PORT
  value: {{ .Values.redis.port | quote }}
- name: FEEDRANK_REDIS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.passwordSecret.name | quote }}
      key: {{ .Values.redis.passwordSecret.key | quote }}
- name: FEEDRANK_FEAST__ONLINE_STORE
  value: redis
{{- with .Values.mlflow }}
{{- if .trackingUri }}
- name: FEEDRANK_MLFLOW__TRACKING_URI
  value: {{ .trackingUri | quote }}
{{- end }}
{{- if .credentialsSecret.name }}
# MLflow's client reads its login from these two variables itself.
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .credentialsSecret.name | quote }}
      key: {{ .credentialsSecret.usernameKey | quote }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .credentialsSecret.name | quote }}
      key: {{ .credentialsSecret.passwordKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "feedrank.volumes" -}}
- name: run
  persistentVolumeClaim:
    claimName: {{ include "feedrank.claim" . }}
- name: feature-store
  configMap:
    name: {{ include "feedrank.fullname" . }}-feature-store
{{- end -}}

{{- define "feedrank.mounts" -}}
- name: run
  mountPath: {{ .Values.settings.runFolder }}
- name: feature-store
  mountPath: /etc/feedrank/feature_repo
  readOnly: true
{{- end -}}

{{/* The Kafka password of one principal ("root", "principal"): the key `password` of the
Secret Strimzi creates for its KafkaUser, as the file <passwordDir>/<principal>.password. */}}
{{- define "feedrank.kafkaCredentialsVolume" -}}
{{- if eq .root.Values.kafka.security "scram" }}
- name: kafka-credentials
  secret:
    secretName: {{ printf "%s-%s" (include "feedrank.fullname" .root) .principal }}
    defaultMode: 0400
    items:
      - key: password
        path: {{ printf "%s.password" .principal }}
{{- end }}
{{- end -}}

{{- define "feedrank.kafkaCredentialsMount" -}}
{{- if eq .Values.kafka.security "scram" }}
- name: kafka-credentials
  mountPath: {{ .Values.kafka.passwordDir }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "feedrank.securityContext" -}}
runAsNonRoot: true
runAsUser: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* serve's CPU from the capacity plan's unit cost (feedrank.capacity_bench.serve_cores):
requests/s × CPU-ms per request is CPU-ms per second, i.e. millicores, over the planned
utilisation. values.yaml says why. */}}
{{- define "feedrank.serveResources" -}}
{{- $plan := .Values.sizing -}}
{{- $sizing := .Values.serve.sizing -}}
{{- $milli := divf (mulf $sizing.peakRequestsPerSecond $plan.serveCpuMsPerRequest) $plan.coreUtilisation | ceil | int -}}
requests:
  cpu: {{ printf "%dm" $milli }}
  memory: {{ .Values.serve.memory.request }}
limits:
  cpu: {{ printf "%dm" (mul $milli $sizing.cpuLimitFactor) }}
  memory: {{ .Values.serve.memory.limit }}
{{- end -}}

{{/* Executors for one run's rows within the window (feedrank.capacity_bench.spark_cores),
in pods of spark.executor.cores. */}}
{{- define "feedrank.sparkExecutorInstances" -}}
{{- $sizing := .Values.spark.sizing -}}
{{- $cores := divf (divf $sizing.rowsPerRun .Values.sizing.sparkRowsPerCoreSecond) (mulf $sizing.windowMinutes 60) | ceil -}}
{{- divf $cores .Values.spark.executor.cores | ceil | int -}}
{{- end -}}
