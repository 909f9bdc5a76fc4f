{{/*
Helpers of the itsm chart. A "service" below is one entry of .Values.services (from deploy/services.toml),
merged over .Values.defaults.
*/}}

{{/* The settings of one service: (list $ name) -> YAML of defaults merged with services.<name>. */}}
{{- define "itsm.settings" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- toYaml (mergeOverwrite (deepCopy $root.Values.defaults) (deepCopy (get $root.Values.services $name))) -}}
{{- end -}}

{{/* Object name of a service's Deployment, Service, ... : (list $ name) */}}
{{- define "itsm.fullname" -}}
{{- printf "%s-%s" (index . 0).Values.name (index . 1) -}}
{{- end -}}

{{/* The image tag: image.tag or the chart's appVersion, never latest. */}}
{{- define "itsm.tag" -}}
{{- $tag := toString (.Values.image.tag | default .Chart.AppVersion) -}}
{{- if or (eq $tag "") (eq $tag "latest") -}}
{{- fail "image.tag must name a version (the chart refuses an empty tag and `latest`)" -}}
{{- end -}}
{{- $tag -}}
{{- end -}}

{{/* A service's image: (list $ name) */}}
{{- define "itsm.image" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.image.registry }}{{ . }}/{{ end }}{{ $root.Values.image.repositoryPrefix }}{{ index . 1 }}:{{ include "itsm.tag" $root }}
{{- end -}}

{{/* Labels that select a service's pods: (list $ name component) */}}
{{- define "itsm.selectorLabels" -}}
app.kubernetes.io/part-of: {{ (index . 0).Values.name }}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/component: {{ index . 2 }}
{{- end -}}

{{/* Every label of an object: (list $ name component) */}}
{{- define "itsm.labels" -}}
{{- $root := index . 0 -}}
{{ include "itsm.selectorLabels" . }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/version: {{ include "itsm.tag" $root | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}

{{/* The pod security context of every pod of the chart: the image's non-root user (deploy/Dockerfile). */}}
{{- define "itsm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context of every container of the chart. */}}
{{- define "itsm.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Host of PostgreSQL's read-write Service (CloudNativePG names it <cluster>-rw). */}}
{{- define "itsm.postgresHost" -}}
{{- printf "%s-rw" .Values.postgres.cluster -}}
{{- end -}}

{{/* The JWKS URL of the issuer (auth), inside the cluster. */}}
{{- define "itsm.jwksUrl" -}}
{{- $issuer := get .Values.services .Values.jwks.service -}}
{{- printf "http://%s-%s:%v%s" .Values.name .Values.jwks.service $issuer.port .Values.jwks.path -}}
{{- end -}}

{{/* The token issuer, ITSM_JWT_ISSUER (README, Auth): gateway.publicUrl, else the gateway's host (https:// with tls,
http:// without); neither set: empty, and the services keep their default. */}}
{{- define "itsm.issuer" -}}
{{- if .Values.gateway.publicUrl -}}
{{- trimSuffix "/" .Values.gateway.publicUrl -}}
{{- else if .Values.gateway.host -}}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.gateway.tls))) .Values.gateway.host -}}
{{- end -}}
{{- end -}}

{{/* An env entry read from a Secret: (list envName secretName key [optional]) */}}
{{- define "itsm.secretEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 }}
      key: {{ index . 2 }}
      {{- if gt (len .) 3 }}
      optional: {{ index . 3 }}
      {{- end }}
{{- end -}}

{{/* NetworkPolicy egress rule to the PostgreSQL cluster's pods (CloudNativePG labels them cnpg.io/cluster). */}}
{{- define "itsm.postgresEgress" -}}
- to:
    - podSelector:
        matchLabels:
          cnpg.io/cluster: {{ .Values.postgres.cluster }}
  ports:
    - port: {{ .Values.postgres.port }}
      protocol: TCP
{{- end -}}

{{/* NetworkPolicy egress rule to cluster DNS. */}}
{{- define "itsm.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 10 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Whether the rate limits keep their buckets in Redis: the gateway has several replicas. */}}
{{- define "itsm.sharedBuckets" -}}
{{- if gt (int .Values.gateway.replicas) 1 }}true{{ end -}}
{{- end -}}

{{/* Whether the chart runs its own Redis for them. */}}
{{- define "itsm.ownRedis" -}}
{{- if and (include "itsm.sharedBuckets" .) (not .Values.gateway.redis.endpoints) }}true{{ end -}}
{{- end -}}

{{/* The client a rate limit or in-flight cap counts for. */}}
{{- define "itsm.source" -}}
sourceCriterion:
  ipStrategy:
    depth: {{ .Values.gateway.sourceDepth }}
{{- end -}}

{{/* With several gateway replicas, the token buckets in Redis (Traefik 3's rateLimit.redis). */}}
{{- define "itsm.redis" -}}
{{- if include "itsm.sharedBuckets" . -}}
redis:
  endpoints:
    {{- if .Values.gateway.redis.endpoints }}
    {{- toYaml .Values.gateway.redis.endpoints | nindent 4 }}
    {{- else }}
    - {{ printf "%s-gateway-redis.%s.svc:6379" .Values.name .Release.Namespace }}
    {{- end }}
  secret: {{ .Values.gateway.redis.secret }}
{{- end }}
{{- end -}}

{{/* A route's match, restricted to gateway.host when one is set: (list $ rule) */}}
{{- define "itsm.match" -}}
{{- $rule := index . 1 -}}
{{- with (index . 0).Values.gateway.host -}}
{{- printf "Host(`%s`) && (%s)" . $rule -}}
{{- else -}}
{{- $rule -}}
{{- end -}}
{{- end -}}
