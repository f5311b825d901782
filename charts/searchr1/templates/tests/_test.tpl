{{/* The common part of the `helm test` pods. */}}

{{- define "searchr1.testPod" -}}
metadata:
  name: {{ .name }}
  labels:
    {{- include "searchr1.componentLabels" (dict "ctx" .ctx "component" "test") | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with (include "searchr1.imagePullSecrets" .ctx) }}{{ . | nindent 2 }}{{- end }}
  securityContext:
    {{- include "searchr1.podSecurityContext" .ctx | nindent 4 }}
{{- end }}
