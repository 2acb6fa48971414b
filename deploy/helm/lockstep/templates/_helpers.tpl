{{/* Chart name. */}}
{{- define "lockstep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart> unless the release name already holds the chart name. Room is left for
the longest suffix ("-rollout-headless", 17 characters) within the 63 of a DNS label. */}}
{{- define "lockstep.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lockstep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "lockstep.labels" -}}
helm.sh/chart: {{ include "lockstep.chart" . }}
app.kubernetes.io/name: {{ include "lockstep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lockstep
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "rollout"). */}}
{{- define "lockstep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lockstep.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lockstep.componentLabels" -}}
{{ include "lockstep.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lockstep.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lockstep.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image of a component: (dict "ctx" $ "image" .Values.rollout.image). */}}
{{- define "lockstep.image" -}}
{{- $variant := ternary "cuda" "cpu" (eq .ctx.Values.device "cuda") -}}
{{- $tag := default (printf "%s-%s" .ctx.Chart.AppVersion $variant) .image.tag -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{- define "lockstep.authSecretName" -}}
{{- default (printf "%s-auth" (include "lockstep.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Flags both services take: model, device, kernels, TLS, auth. */}}
{{- define "lockstep.commonArgs" -}}
- --model_dir={{ .Values.model.dir }}
- --device={{ .Values.device }}
- --kernels={{ .Values.kernels }}
{{- if .Values.tls.enabled }}
- --tls_cert=/etc/lockstep/tls/tls.crt
- --tls_key=/etc/lockstep/tls/tls.key
{{- if .Values.tls.mutual }}
- --tls_ca=/etc/lockstep/tls/ca.crt
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
- --auth_token_file=/etc/lockstep/auth/{{ .Values.auth.secretKey }}
{{- end }}
{{- end -}}

{{/* The Secret the learner verifies the rollouts with (ca.crt) and takes its client certificate from
(tls.crt, tls.key): learner.rolloutTls.existingSecret, else tls.existingSecret when tls.enabled, else "". */}}
{{- define "lockstep.rolloutTlsSecret" -}}
{{- $r := .Values.learner.rolloutTls -}}
{{- if $r.existingSecret -}}
{{- $r.existingSecret -}}
{{- else if .Values.tls.enabled -}}
{{- .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The learner's flags for dialing the rollouts with TLS (learner.rolloutTls, implied by tls.enabled):
--rollout_tls_ca (and the client certificate) from the Secret mounted at /etc/lockstep/rollout-tls, or
--rollout_tls (default roots) without one. */}}
{{- define "lockstep.rolloutTlsArgs" -}}
{{- $v := .Values -}}
{{- $r := $v.learner.rolloutTls -}}
{{- $secret := include "lockstep.rolloutTlsSecret" . -}}
{{- if or $v.tls.enabled $r.enabled }}
{{- if $secret }}
- --rollout_tls_ca=/etc/lockstep/rollout-tls/ca.crt
{{- if or $r.clientCertificate (and (not $r.existingSecret) $v.tls.mutual) }}
- --rollout_tls_cert=/etc/lockstep/rollout-tls/tls.crt
- --rollout_tls_key=/etc/lockstep/rollout-tls/tls.key
{{- end }}
{{- else }}
{{- if $r.clientCertificate }}
{{- fail "learner.rolloutTls.clientCertificate needs learner.rolloutTls.existingSecret (or tls.enabled)" }}
{{- end }}
- --rollout_tls
{{- end }}
{{- if $r.serverName }}
- --rollout_tls_server_name={{ $r.serverName }}
{{- else if and (not $v.learner.rollouts) $v.rollout.enabled }}
{{- /* Members are dialed by pod IP (--rollout_dns): check the Service's name. */}}
- --rollout_tls_server_name={{ include "lockstep.fullname" . }}-rollout-headless.{{ .Release.Namespace }}.svc
{{- end }}
{{- else if or $r.serverName $r.clientCertificate $r.existingSecret }}
{{- fail "learner.rolloutTls.serverName, clientCertificate and existingSecret need learner.rolloutTls.enabled or tls.enabled" }}
{{- end }}
{{- end -}}

{{/* Volume mounts both services have. */}}
{{- define "lockstep.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.model.existingClaim }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/lockstep/tls
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/lockstep/auth
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes both services have: (dict "ctx" $ "shm" .Values.rollout.shm). */}}
{{- define "lockstep.commonVolumes" -}}
{{- $v := .ctx.Values -}}
- name: tmp
  emptyDir: {}
{{- if .shm.enabled }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm.sizeLimit }}
{{- end }}
{{- if $v.model.existingClaim }}
- name: model
  persistentVolumeClaim:
    claimName: {{ $v.model.existingClaim }}
    readOnly: true
{{- end }}
{{- if $v.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.existingSecret is required when tls.enabled" $v.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if $v.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "lockstep.authSecretName" .ctx }}
    defaultMode: 0440
    items:
      - key: {{ $v.auth.secretKey }}
        path: {{ $v.auth.secretKey }}
{{- end }}
{{- end -}}

{{/* Probes of a component: (dict "ctx" $ "probes" .Values.rollout.probes "port" 50051 "service"
"lockstep.v1.RolloutService"). Native gRPC probes (grpc.health.v1) cannot use TLS: with TLS on, they
fall back to a TCP check of the gRPC port. */}}
{{- define "lockstep.probes" -}}
{{- $tls := .ctx.Values.tls.enabled -}}
{{- range $kind := list "startup" "liveness" "readiness" }}
{{ $kind }}Probe:
  {{- if $tls }}
  tcpSocket:
    port: grpc
  {{- else }}
  grpc:
    port: {{ $.port }}
    service: {{ ternary $.service "" (eq $kind "readiness") | quote }}
  {{- end }}
  {{- with (index $.probes $kind) }}
  periodSeconds: {{ .periodSeconds }}
  failureThreshold: {{ .failureThreshold }}
  timeoutSeconds: {{ .timeoutSeconds }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* GPU resources: (dict "resources" .Values.rollout.resources "name" "nvidia.com/gpu" "count" 2 "on"
true). */}}
{{- define "lockstep.resources" -}}
{{- $r := deepCopy (default dict .resources) -}}
{{- if .on -}}
{{- $limits := default dict $r.limits -}}
{{- $_ := set $limits .name (int .count) -}}
{{- $_ := set $r "limits" $limits -}}
{{- $requests := default dict $r.requests -}}
{{- $_ := set $requests .name (int .count) -}}
{{- $_ := set $r "requests" $requests -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}
