{{/*
The chart holds no manifest of its own: files/ links to the Kustomize kit, and each
template reads a kit file, applies what its kustomization.yaml would (labels, image tag,
generated ConfigMap, component patches) and then what the values change. Names are the
kit's (session-metrics, session-metrics-redis): the alerts and the KEDA query select
job="session-metrics", the job Prometheus takes from the app.kubernetes.io/name label.
*/}}

{{/* A kit file as text; a missing one stops the render rather than dropping an object. */}}
{{- define "sm.file" -}}
{{- $root := index . 0 -}}
{{- $path := printf "files/%s" (index . 1) -}}
{{- $text := $root.Files.Get $path -}}
{{- if not $text -}}
{{- fail (printf "%s is missing or empty: the chart reads the Kustomize kit through files/ (symlinks into deploy/)" $path) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* A kit file parsed; call as (include "sm.read" (list $ "base/service.yaml") | fromYaml). */}}
{{- define "sm.read" -}}
{{- include "sm.file" . | fromYaml | toYaml -}}
{{- end -}}

{{/* The labels deploy/base/kustomization.yaml puts on every object of the base. */}}
{{- define "sm.kitLabels" -}}
{{- $kit := include "sm.read" (list . "base/kustomization.yaml") | fromYaml -}}
{{- $labels := dict -}}
{{- range $kit.labels -}}
{{- $labels = merge $labels .pairs -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* What Helm adds to every object's metadata (never to a selector). */}}
{{- define "sm.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{/*
An object of the base with the kit's labels (on metadata, and on the pod template as
includeTemplates asks) and Helm's; call with (list $ object).
*/}}
{{- define "sm.labelled" -}}
{{- $root := index . 0 -}}
{{- $obj := index . 1 -}}
{{- $kit := include "sm.kitLabels" $root | fromYaml -}}
{{- include "sm.helmOwned" (list $root $obj $kit) -}}
{{- end -}}

{{/* An object with Helm's labels (and `extra`, which win) on its metadata. */}}
{{- define "sm.helmOwned" -}}
{{- $root := index . 0 -}}
{{- $obj := index . 1 -}}
{{- $extra := index . 2 -}}
{{- $helm := include "sm.helmLabels" $root | fromYaml -}}
{{- $_ := set $obj.metadata "labels" (merge (dict) $extra (default (dict) $obj.metadata.labels) $helm) -}}
{{- if and (eq $obj.kind "Deployment") $extra -}}
{{- $tpl := $obj.spec.template -}}
{{- $_ := set $tpl "metadata" (default (dict) $tpl.metadata) -}}
{{- $_ := set $tpl.metadata "labels" (merge (dict) $extra (default (dict) $tpl.metadata.labels)) -}}
{{- end -}}
{{- toYaml $obj -}}
{{- end -}}

{{/* literals of a kustomization's configMapGenerator `name`, as a map. */}}
{{- define "sm.literals" -}}
{{- $kit := include "sm.read" (list (index . 0) (index . 1)) | fromYaml -}}
{{- $out := dict -}}
{{- range $kit.configMapGenerator -}}
{{- if eq .name (index $ 2) -}}
{{- range .literals -}}
{{- $kv := splitn "=" 2 . -}}
{{- $_ := set $out $kv._0 $kv._1 -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
A value as the service parses it: YAML numbers reach templates as floats, and a float's
default text (1.048576e+06) is no integer to `int()`.
*/}}
{{- define "sm.text" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "sm.env" -}}
{{- printf "SESSION_METRICS_%s" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/* Where kafka.tls puts the PEM files, and whether there are any. */}}
{{- define "sm.tlsDir" -}}/etc/session-metrics/kafka-tls{{- end -}}
{{- define "sm.tlsSecret" -}}
{{- with .Values.kafka.tls -}}
{{- if .existingSecret -}}{{ .existingSecret }}{{- else if .ca -}}session-metrics-kafka-tls{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The workers' SESSION_METRICS_* settings: the base's literals, components/redis's with
redis.enabled, the TLS files' paths, then config (an empty string drops a literal).
*/}}
{{- define "sm.config" -}}
{{- $data := include "sm.literals" (list . "base/kustomization.yaml" "session-metrics") | fromYaml -}}
{{- if .Values.redis.enabled -}}
{{- $data = merge (include "sm.literals" (list . "components/redis/kustomization.yaml" "session-metrics") | fromYaml) $data -}}
{{- end -}}
{{- if include "sm.tlsSecret" . -}}
{{- $dir := include "sm.tlsDir" . -}}
{{- $_ := set $data "SESSION_METRICS_SSL_CAFILE" (printf "%s/ca.crt" $dir) -}}
{{- if or .Values.kafka.tls.mutual .Values.kafka.tls.cert -}}
{{- $_ := set $data "SESSION_METRICS_SSL_CERTFILE" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $data "SESSION_METRICS_SSL_KEYFILE" (printf "%s/tls.key" $dir) -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := .Values.config -}}
{{- $env := include "sm.env" $name -}}
{{- $text := include "sm.text" $value -}}
{{- if eq $text "" -}}
{{- $_ := unset $data $env -}}
{{- else -}}
{{- $_ := set $data $env $text -}}
{{- end -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* A number of seconds from the ConfigMap (the service's default when unset). */}}
{{- define "sm.seconds" -}}
{{- $config := index . 0 -}}
{{- $value := get $config (index . 1) -}}
{{- if $value -}}{{ $value }}{{- else -}}{{ index . 2 }}{{- end -}}
{{- end -}}

{{/*
What components/redis patches into the workers' objects, read from its kustomization.yaml:
the env entries its strategic-merge patch gives the worker container, and the egress rules
its JSON patch appends to the workers' NetworkPolicy. A patch of another shape stops the
render, so the chart never silently leaves out what the component does.
*/}}
{{- define "sm.redisPatches" -}}
{{- $kit := include "sm.read" (list . "components/redis/kustomization.yaml") | fromYaml -}}
{{- $env := list -}}
{{- $egress := list -}}
{{- range $kit.patches -}}
{{- if .target -}}
{{- if not (and (eq .target.kind "NetworkPolicy") (eq .target.name "session-metrics")) -}}
{{- fail (printf "components/redis patches %s %s: the chart applies patches of the NetworkPolicy session-metrics only" .target.kind .target.name) -}}
{{- end -}}
{{- range (fromYamlArray .patch) -}}
{{- if not (and (eq .op "add") (eq .path "/spec/egress/-")) -}}
{{- fail (printf "components/redis: the chart applies `add /spec/egress/-` only, not %s %s" .op .path) -}}
{{- end -}}
{{- $egress = append $egress .value -}}
{{- end -}}
{{- else -}}
{{- $patch := fromYaml .patch -}}
{{- if not (and (eq $patch.kind "Deployment") (eq $patch.metadata.name "session-metrics")) -}}
{{- fail (printf "components/redis patches %s %s: the chart applies patches of the Deployment session-metrics only" $patch.kind $patch.metadata.name) -}}
{{- end -}}
{{- range $patch.spec.template.spec.containers -}}
{{- if or (ne .name "session-metrics") (ne (keys . | sortAlpha | join ",") "env,name") -}}
{{- fail "components/redis: the chart applies env entries of the container session-metrics only" -}}
{{- end -}}
{{- $env = concat $env .env -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "env" $env "egress" $egress) -}}
{{- end -}}
