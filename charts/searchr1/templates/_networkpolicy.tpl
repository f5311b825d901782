{{/* NetworkPolicy peers. */}}

{{- define "searchr1.np.component" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "searchr1.name" .ctx }}
      app.kubernetes.io/instance: {{ .ctx.Release.Name }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: {{ toJson .components }}
{{- end }}
{{- define "searchr1.np.learners" -}}
# Learner RayJob pods (made by the API; labelled by services/api/kuberay.py and KubeRay).
- podSelector:
    matchLabels:
      app.kubernetes.io/part-of: searchr1
    matchExpressions:
      - key: ray.io/node-type
        operator: Exists
      - key: app.kubernetes.io/component
        operator: DoesNotExist
{{- end }}
{{- define "searchr1.np.prometheus" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheusNamespaceSelector | nindent 4 }}
{{- end }}
