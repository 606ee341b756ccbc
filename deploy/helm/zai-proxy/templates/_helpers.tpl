{{/* Names, labels, images, secrets and the environment shared by the templates. */}}

{{- define "zai-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 30 | trimSuffix "-" -}}
{{- end -}}

{{/* At most 30 characters: "<fullname>-proxy-<variant>" must stay a valid Service name. */}}
{{- define "zai-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "zai-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "proxy"). */}}
{{- define "zai-proxy.labels" -}}
helm.sh/chart: {{ include "zai-proxy.chart" .root }}
{{ include "zai-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: zai-proxy
{{- end -}}

{{- define "zai-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zai-proxy.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The label that tells a proxy pod's variant (DEPLOYMENT_VARIANT). */}}
{{- define "zai-proxy.variantLabel" -}}zai-proxy/variant{{- end -}}

{{- define "zai-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "zai-proxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of the zai-proxy services; call with (dict "root" $ "image" <override>). */}}
{{- define "zai-proxy.image" -}}
{{- $override := .image | default dict -}}
{{- $repository := $override.repository | default .root.Values.image.repository -}}
{{- $tag := $override.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository (toString $tag) -}}
{{- end -}}

{{/* Object names. */}}
{{- define "zai-proxy.secretName" -}}{{ include "zai-proxy.fullname" . }}{{- end -}}
{{- define "zai-proxy.configName" -}}{{ include "zai-proxy.fullname" . }}-config{{- end -}}
{{- define "zai-proxy.proxyService" -}}{{ include "zai-proxy.fullname" . }}-proxy{{- end -}}
{{- define "zai-proxy.proxyHeadless" -}}{{ include "zai-proxy.fullname" . }}-proxy-headless{{- end -}}
{{- define "zai-proxy.limiterService" -}}{{ include "zai-proxy.fullname" . }}-limiter{{- end -}}
{{- define "zai-proxy.limiterHeadless" -}}{{ include "zai-proxy.fullname" . }}-limiter-headless{{- end -}}
{{- define "zai-proxy.collectorName" -}}{{ include "zai-proxy.fullname" . }}-collector{{- end -}}
{{- define "zai-proxy.dashboardName" -}}{{ include "zai-proxy.fullname" . }}-dashboard{{- end -}}
{{- define "zai-proxy.redisName" -}}{{ include "zai-proxy.fullname" . }}-redis{{- end -}}
{{- define "zai-proxy.dataClaim" -}}
{{- .Values.database.sqlite.persistence.existingClaim | default (printf "%s-data" (include "zai-proxy.fullname" .)) -}}
{{- end -}}

{{/* "true" when the rollups live in an external database (PostgreSQL), else SQLite. */}}
{{- define "zai-proxy.externalDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "zai-proxy.sqliteUrl" -}}sqlite+aiosqlite:////data/zai-proxy.db{{- end -}}

{{/* The pod that serves the dashboard: its own, or the collector's (SQLite). */}}
{{- define "zai-proxy.dashboardComponent" -}}
{{- if include "zai-proxy.externalDatabase" . -}}dashboard{{- else -}}collector{{- end -}}
{{- end -}}

{{/*
A value of the chart's Secret: the one given, else the one the Secret already holds
(so generated tokens survive upgrades), else a new random one (or "" when not generated).
Call with (dict "root" $ "key" "LIMITER_ADMIN_TOKEN" "value" <given> "generate" true).
*/}}
{{- define "zai-proxy.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace (include "zai-proxy.secretName" .root) -}}
{{- $data := (get ($existing | default dict) "data") | default dict -}}
{{- if .value -}}
{{- .value | b64enc -}}
{{- else if hasKey $data .key -}}
{{- get $data .key -}}
{{- else if .generate -}}
{{- randAlphaNum 40 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Where a secret env var comes from: (dict "root" $ "item" "apiKey"). */}}
{{- define "zai-proxy.secretRef.name" -}}
{{- .root.Values.secrets.existingSecret | default (include "zai-proxy.secretName" .root) -}}
{{- end -}}

{{- define "zai-proxy.env.apiKey" -}}
- name: ZAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretRef.name" (dict "root" .) }}
      key: {{ .Values.secrets.keys.apiKey }}
{{- end -}}

{{- define "zai-proxy.env.limiterAdminToken" -}}
- name: LIMITER_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretRef.name" (dict "root" .) }}
      key: {{ .Values.secrets.keys.limiterAdminToken }}
{{- end -}}

{{- define "zai-proxy.env.dashboardToken" -}}
- name: DASHBOARD_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretRef.name" (dict "root" .) }}
      key: {{ .Values.secrets.keys.dashboardToken }}
{{- end -}}

{{- define "zai-proxy.env.metricsToken" -}}
- name: METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretRef.name" (dict "root" .) }}
      key: {{ .Values.secrets.keys.metricsToken }}
      {{- if .Values.secrets.existingSecret }}
      # Without the key in your Secret, /metrics stays open (and the collector sends none).
      optional: true
      {{- end }}
{{- end -}}

{{/* ZAI_API_KEYS when the chart's Secret holds upstream keys or an existing Secret may;
ZAI_API_KEYS_FILE when a keys file is mounted (zai-proxy.upstreamKeysMount/Volume). */}}
{{- define "zai-proxy.env.upstreamKeys" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.upstreamKeys }}
- name: ZAI_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretRef.name" (dict "root" .) }}
      key: {{ .Values.secrets.keys.upstreamKeys }}
      optional: {{ not .Values.secrets.upstreamKeys }}
{{- end }}
{{- if .Values.upstream.keysFile.existingSecret }}
- name: ZAI_API_KEYS_FILE
  value: /etc/zai-proxy/upstream-keys/{{ .Values.upstream.keysFile.key }}
{{- end }}
{{- end -}}

{{- define "zai-proxy.upstreamKeysMount" -}}
{{- if .Values.upstream.keysFile.existingSecret }}
- name: upstream-keys
  mountPath: /etc/zai-proxy/upstream-keys
  readOnly: true
{{- end }}
{{- end -}}

{{- define "zai-proxy.upstreamKeysVolume" -}}
{{- if .Values.upstream.keysFile.existingSecret }}
- name: upstream-keys
  secret:
    secretName: {{ .Values.upstream.keysFile.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* PROXY_API_KEYS when the chart's Secret holds client keys or an existing Secret may. */}}
{{- define "zai-proxy.env.clientKeys" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.clientKeys }}
- name: PROXY_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretRef.name" (dict "root" .) }}
      key: {{ .Values.secrets.keys.clientKeys }}
      optional: {{ not .Values.secrets.clientKeys }}
{{- end }}
{{- end -}}

{{- define "zai-proxy.env.redis" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
{{- if and (not .Values.redis.enabled) .Values.redis.existingSecret }}
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
      name: {{ include "zai-proxy.secretName" . }}
      key: REDIS_URL
{{- end }}
{{- end -}}

{{- define "zai-proxy.env.database" -}}
{{- if .Values.database.existingSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else if .Values.database.url }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "zai-proxy.secretName" . }}
      key: DATABASE_URL
{{- else }}
- name: DATABASE_URL
  value: {{ include "zai-proxy.sqliteUrl" . | quote }}
{{- end }}
{{- end -}}

{{/* A map of non-secret variables as EnvVar entries. */}}
{{- define "zai-proxy.env.map" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/* envFrom of every zai-proxy container: the shared non-secret configuration. */}}
{{- define "zai-proxy.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "zai-proxy.configName" . }}
{{- end -}}

{{/* Pod annotations that roll the pods when the configuration or the Secret changes. */}}
{{- define "zai-proxy.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* The writable /tmp of every zai-proxy container (the root filesystem is read-only). */}}
{{- define "zai-proxy.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "zai-proxy.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "zai-proxy.podSpecCommon" -}}
serviceAccountName: {{ include "zai-proxy.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Scheduling fields of a component: (dict "values" .Values.limiter). */}}
{{- define "zai-proxy.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Cross-field checks that a JSON schema cannot word clearly. */}}
{{- define "zai-proxy.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.url) (not .Values.redis.existingSecret) -}}
{{- fail "redis: set redis.url or redis.existingSecret when redis.enabled is false: proxies without a shared Redis would each admit the whole rate" -}}
{{- end -}}
{{- if and .Values.database.url .Values.database.existingSecret -}}
{{- fail "database: set database.url or database.existingSecret, not both" -}}
{{- end -}}
{{- $enabled := 0 -}}
{{- range $name, $variant := .Values.variants -}}
{{- if include "zai-proxy.variantEnabled" (dict "variant" $variant) -}}{{- $enabled = add1 $enabled -}}{{- end -}}
{{- end -}}
{{- if eq $enabled 0 -}}
{{- fail "variants: at least one variant must be enabled" -}}
{{- end -}}
{{- with .Values.proxy.activeVariant -}}
{{- $active := get $.Values.variants . -}}
{{- if not (hasKey $.Values.variants .) -}}
{{- fail (printf "proxy.activeVariant: %q is not one of the variants (%s)" . (keys $.Values.variants | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if not (include "zai-proxy.variantEnabled" (dict "variant" $active)) -}}
{{- fail (printf "proxy.activeVariant: variant %q is disabled" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A variant's autoscaling: proxy.autoscaling with the variant's keys laid over it, as JSON
(sprig's merge functions skip false and 0, which a variant must be able to set).
Call with (dict "root" $ "variant" $variant).
*/}}
{{- define "zai-proxy.variantAutoscaling" -}}
{{- $autoscaling := deepCopy .root.Values.proxy.autoscaling -}}
{{- range $key, $value := (.variant.autoscaling | default dict) -}}
{{- $current := get $autoscaling $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- range $innerKey, $innerValue := $value -}}
{{- $_ := set $current $innerKey $innerValue -}}
{{- end -}}
{{- else -}}
{{- $_ := set $autoscaling $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $autoscaling -}}
{{- end -}}

{{/* Whether a variant is enabled ("true" or ""): (dict "variant" $variant). */}}
{{- define "zai-proxy.variantEnabled" -}}
{{- if ne (toString (dig "enabled" true (.variant | default dict))) "false" -}}true{{- end -}}
{{- end -}}

{{/* The dashboard container: in its own pod, or beside the collector (SQLite). */}}
{{- define "zai-proxy.dashboardContainer" -}}
{{- $dashboard := .Values.dashboard -}}
- name: dashboard
  image: {{ include "zai-proxy.image" (dict "root" .) | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["dashboard"]
  {{- include "zai-proxy.envFrom" . | nindent 2 }}
  env:
    - name: DASHBOARD_PORT
      value: {{ $dashboard.port | quote }}
    - name: LIMITER_URL
      value: {{ printf "http://%s:%v" (include "zai-proxy.limiterService" .) .Values.limiter.port | quote }}
    {{- include "zai-proxy.env.database" . | trim | nindent 4 }}
    {{- include "zai-proxy.env.limiterAdminToken" . | nindent 4 }}
    {{- if $dashboard.auth }}
    {{- include "zai-proxy.env.dashboardToken" . | nindent 4 }}
    {{- end }}
    {{- with include "zai-proxy.env.map" $dashboard.env | trim }}{{ . | nindent 4 }}{{- end }}
    {{- with $dashboard.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: dashboard
      containerPort: {{ $dashboard.port }}
      protocol: TCP
  readinessProbe:
    httpGet:
      path: /healthz
      port: dashboard
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 2
  livenessProbe:
    httpGet:
      path: /healthz
      port: dashboard
    initialDelaySeconds: 5
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  resources:
    {{- toYaml $dashboard.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "zai-proxy.tmpMount" . | nindent 4 }}
    {{- if not (include "zai-proxy.externalDatabase" .) }}
    - name: data
      mountPath: /data
    {{- end }}
{{- end -}}

{{/* An Ingress to one Service: (dict "root" $ "ingress" <values> "name" <name> "component" <c> "port" <port>). */}}
{{- define "zai-proxy.ingress" -}}
{{- $service := .name -}}
{{- $port := .port -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ .name }}
  labels:
    {{- include "zai-proxy.labels" (dict "root" .root "component" .component) | nindent 4 }}
  {{- with .ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .ingress.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with .ingress.tls }}
  tls:
    {{- range . }}
    - hosts:
        {{- toYaml .hosts | nindent 8 }}
      {{- with .secretName }}
      secretName: {{ . }}
      {{- end }}
    {{- end }}
  {{- end }}
  rules:
    {{- range .ingress.hosts }}
    - {{- with .host }}
      host: {{ . | quote }}
      {{- end }}
      http:
        paths:
          {{- range (.paths | default (list (dict "path" "/" "pathType" "Prefix"))) }}
          - path: {{ .path }}
            pathType: {{ .pathType | default "Prefix" }}
            backend:
              service:
                name: {{ $service }}
                port:
                  number: {{ $port }}
          {{- end }}
    {{- end }}
{{- end -}}
