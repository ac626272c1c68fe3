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
an unknown FEEDRANK_ key is refused at start). Kafka SASL and the Redis password are not
settings yet (the security profile, issue 26), so no credential is passed here. */}}
{{- define "feedrank.env" -}}
- name: FEEDRANK_PROFILE
  value: {{ .Values.settings.profile | quote }}
- name: FEEDRANK_PATHS__HOME
  value: {{ .Values.settings.runFolder | quote }}
- name: FEEDRANK_KAFKA__HOST
  value: {{ .Values.kafka.host | quote }}
- name: FEEDRANK_KAFKA__PORT
  value: {{ .Values.kafka.port | quote }}
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

{{- define "feedrank.securityContext" -}}
runAsNonRoot: true
runAsUser: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
