{{/* Labels of every object of the chart: (list $ component) */}}
{{- define "itsm-data.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/part-of: {{ $root.Values.name }}
app.kubernetes.io/component: {{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}


{{/* The routing keys whose first word is one of a list (a topic permission's regular expression): "#" any */}}
{{- define "itsm-data.routingKeys" -}}
{{- if has "#" . -}}
.*
{{- else if . -}}
{{- $words := list -}}
{{- range . }}{{ $words = append $words (regexQuoteMeta .) }}{{ end -}}
^({{ join "|" $words }})\.
{{- else -}}
^$
{{- end -}}
{{- end -}}
