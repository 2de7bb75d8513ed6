{{/* The release's name prefix of every object. */}}
{{- define "capstan.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "capstan.labels" -}}
app.kubernetes.io/name: capstan
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: (dict "ctx" . "role" "gateway"). */}}
{{- define "capstan.selector" -}}
app.kubernetes.io/name: capstan
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "capstan.image" -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{- define "capstan.natsURL" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" (include "capstan.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "capstan.apiServer" -}}
{{- printf "https://%s-gateway.%s.svc:%d" (include "capstan.fullname" .) .Release.Namespace (int .Values.gateway.service.port) -}}
{{- end -}}

{{/* The pod security context of the non-root roles. */}}
{{- define "capstan.podSecurityContext" -}}
{{- if .Values.podSecurityContext -}}
{{ toYaml .Values.podSecurityContext }}
{{- else -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{- define "capstan.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Spread a role's pods over nodes and zones (when topologySpread). */}}
{{- define "capstan.spread" -}}
{{- if .ctx.Values.topologySpread }}
topologySpreadConstraints:
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "capstan.selector" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The bus credential volume of a role: (dict "ctx" . "role" "controllers"). */}}
{{- define "capstan.busVolume" -}}
- name: bus
  secret:
    secretName: {{ include "capstan.fullname" .ctx }}-bus-{{ .role }}
{{- end -}}

{{- define "capstan.natsArgs" -}}
- --nats={{ include "capstan.natsURL" .ctx }}
- --nats-creds=/etc/capstan/bus/{{ .role }}.creds
- --nats-ca=/etc/capstan/bus/ca.crt
{{- end -}}
