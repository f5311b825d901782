{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "searchr1.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-searchr1, or the release name alone when it already says searchr1; at most 40 characters so that
     suffixes (-retriever-index-abcdef12, KubeRay's -head-xxxxx) keep names under 63. */}}
{{- define "searchr1.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. `app.kubernetes.io/part-of: searchr1` is also what learner RayJobs carry
     (services/api/kuberay.py), so NetworkPolicies can admit them. */}}
{{- define "searchr1.labels" -}}
helm.sh/chart: {{ include "searchr1.chart" . }}
app.kubernetes.io/name: {{ include "searchr1.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: searchr1
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "searchr1.selectorLabels" (dict "ctx" $ "component" "api") */}}
{{- define "searchr1.selectorLabels" -}}
app.kubernetes.io/name: {{ include "searchr1.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "searchr1.componentLabels" -}}
{{ include "searchr1.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* ---------------------------------------------------------------- images */}}

{{/* include "searchr1.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) */}}
{{- define "searchr1.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .default .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.image" -}}
{{- include "searchr1.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) -}}
{{- end -}}

{{/* The image of a Ray tier: include "searchr1.flavorImage" (dict "ctx" $ "flavor" "gpu") */}}
{{- define "searchr1.flavorImage" -}}
{{- if eq .flavor "gpu" -}}
{{- include "searchr1.imageRef" (dict "image" .ctx.Values.gpuImage "default" .ctx.Chart.AppVersion) -}}
{{- else -}}
{{- include "searchr1.imageRef" (dict "image" .ctx.Values.image "default" .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.flavorPullPolicy" -}}
{{- if eq .flavor "gpu" -}}{{ .ctx.Values.gpuImage.pullPolicy }}{{- else -}}{{ .ctx.Values.image.pullPolicy }}{{- end -}}
{{- end -}}

{{/* Call as: {{- with (include "searchr1.imagePullSecrets" .) }}{{ . | nindent N }}{{- end }} */}}
{{- define "searchr1.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- security */}}

{{- define "searchr1.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "searchr1.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}


{{/* ---------------------------------------------------------------- secrets and connection settings */}}

{{- define "searchr1.apiTokenSecret" -}}
{{- default (printf "%s-api-token" (include "searchr1.fullname" .)) .Values.api.auth.existingSecret -}}
{{- end -}}

{{- define "searchr1.apiTokenKey" -}}
{{- if .Values.api.auth.existingSecret }}{{ .Values.api.auth.existingSecretKey }}{{ else }}api-token{{ end -}}
{{- end -}}

{{/* The Secret and key of the Redis password; empty name = no password (an external Redis without auth). */}}
{{- define "searchr1.redisSecret" -}}
{{- if .Values.redis.enabled -}}
{{- default (printf "%s-redis" (include "searchr1.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.redisSecretKey" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretPasswordKey }}{{ else }}redis-password{{ end -}}
{{- else -}}
{{- .Values.externalRedis.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.redisHost" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis.%s.svc" (include "searchr1.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.redisPort" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.externalRedis.port }}{{ end -}}
{{- end -}}

{{/* The Redis URL with the password left as $(REDIS_PASSWORD), which Kubernetes expands from the env var of that
     name ("searchr1.redisEnv" defines it first). */}}
{{- define "searchr1.redisUrlTemplate" -}}
{{- $scheme := ternary "rediss" "redis" (and (not .Values.redis.enabled) .Values.externalRedis.tls) -}}
{{- $db := ternary 0 .Values.externalRedis.db .Values.redis.enabled -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" (ne (include "searchr1.redisSecret" .) "") -}}
{{- printf "%s://%s%s:%s/%v" $scheme $auth (include "searchr1.redisHost" .) (include "searchr1.redisPort" .) $db -}}
{{- end -}}

{{/* env entries: REDIS_PASSWORD from its Secret, then SEARCHR1_REDIS_URL built from it. */}}
{{- define "searchr1.redisEnv" -}}
{{- if include "searchr1.redisSecret" . -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "searchr1.redisSecret" . }}
      key: {{ include "searchr1.redisSecretKey" . }}
{{ end -}}
- name: SEARCHR1_REDIS_URL
  value: {{ include "searchr1.redisUrlTemplate" . | quote }}
{{- end -}}

{{/* env entries every searchr1 process gets. */}}
{{- define "searchr1.platformEnv" -}}
{{ include "searchr1.redisEnv" . }}
- name: SEARCHR1_KEY_PREFIX
  value: {{ .Values.platform.keyPrefix | quote }}
- name: SEARCHR1_LOG_LEVEL
  value: {{ .Values.platform.logLevel | quote }}
- name: SEARCHR1_LOG_FORMAT
  value: {{ .Values.platform.logFormat | quote }}
- name: HOME
  value: /tmp
{{- range $name, $value := .Values.platform.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "searchr1.learnerEnvSecret" -}}
{{- default (printf "%s-learner-env" (include "searchr1.fullname" .)) .Values.learner.envFromSecret -}}
{{- end -}}

{{- define "searchr1.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s-qdrant.%s.svc:6333" (include "searchr1.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalQdrant.url -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.qdrantSecret" -}}
{{- if .Values.qdrant.enabled -}}
{{- default (printf "%s-qdrant" (include "searchr1.fullname" .)) .Values.qdrant.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalQdrant.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "searchr1.qdrantSecretKey" -}}
{{- if .Values.qdrant.enabled -}}
{{- if .Values.qdrant.auth.existingSecret }}{{ .Values.qdrant.auth.existingSecretKey }}{{ else }}api-key{{ end -}}
{{- else -}}
{{- .Values.externalQdrant.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{/* env entries of the retriever and the index build: where the index is. */}}
{{- define "searchr1.retrieverIndexEnv" -}}
- name: SEARCHR1_COLLECTION
  value: {{ .Values.retriever.collection | quote }}
{{- if eq .Values.retriever.backend "qdrant" }}
- name: SEARCHR1_QDRANT_URL
  value: {{ include "searchr1.qdrantUrl" . | quote }}
{{- if include "searchr1.qdrantSecret" . }}
- name: SEARCHR1_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "searchr1.qdrantSecret" . }}
      key: {{ include "searchr1.qdrantSecretKey" . }}
{{- end }}
- name: SEARCHR1_INDEX_DIR
  value: /tmp/index
{{- else }}
- name: SEARCHR1_INDEX_DIR
  value: {{ .Values.retriever.indexDir | quote }}
{{- end }}
{{- end -}}

{{- define "searchr1.retrieverUrl" -}}
{{- printf "http://%s-retriever.%s.svc:%v" (include "searchr1.fullname" .) .Release.Namespace .Values.retriever.port -}}
{{- end -}}

{{- define "searchr1.dataClaim" -}}
{{- default (printf "%s-data" (include "searchr1.fullname" .)) .Values.storage.existingClaim -}}
{{- end -}}

{{- define "searchr1.usesData" -}}
{{- if or .Values.storage.create .Values.storage.existingClaim }}true{{ end -}}
{{- end -}}

{{/* A generated secret value that survives upgrades: the existing Secret's value when there is one.
     include "searchr1.keepSecret" (dict "ctx" $ "name" NAME "key" KEY "length" 32) */}}
{{- define "searchr1.keepSecret" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing (index ($existing.data | default dict) .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}

{{/* Writable scratch space for read-only root filesystems. */}}
{{- define "searchr1.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}
