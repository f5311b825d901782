{{/* Pieces of the Ray pods (rollout RayService). */}}

{{- define "searchr1.rayEnv" -}}
{{ include "searchr1.platformEnv" . }}
- name: SEARCHR1_MODEL
  value: {{ .Values.rollout.model | quote }}
- name: SEARCHR1_ENGINE
  value: {{ .Values.rollout.engine | quote }}
- name: SEARCHR1_DTYPE
  value: {{ .Values.rollout.dtype | quote }}
- name: SEARCHR1_MAX_MODEL_LEN
  value: {{ .Values.rollout.maxModelLen | quote }}
- name: SEARCHR1_GROUP
  value: {{ .Values.rollout.group | quote }}
- name: SEARCHR1_CONCURRENCY
  value: {{ .Values.rollout.concurrency | quote }}
- name: SEARCHR1_REPLICAS
  value: {{ ternary .Values.rollout.autoscaling.initialReplicas .Values.rollout.replicas .Values.rollout.autoscaling.enabled | quote }}
- name: SEARCHR1_REPLICA_GPUS
  value: {{ .Values.rollout.replica.numGpus | quote }}
- name: SEARCHR1_REPLICA_CPUS
  value: {{ .Values.rollout.replica.numCpus | quote }}
- name: SEARCHR1_OMP_THREADS
  value: {{ .Values.rollout.replica.ompThreads | quote }}
- name: SEARCHR1_METRICS_HOST
  value: "0.0.0.0"
- name: SEARCHR1_METRICS_PORT
  value: {{ .Values.rollout.metricsPort | quote }}
{{- if .Values.retriever.enabled }}
- name: SEARCHR1_RETRIEVER_URL
  value: {{ include "searchr1.retrieverUrl" . | quote }}
{{- end }}
{{- if include "searchr1.usesData" . }}
# Model downloads survive pod restarts on the shared volume.
- name: HF_HOME
  value: /data/.cache/huggingface
{{- end }}
- name: NCCL_DEBUG
  value: {{ .Values.rollout.nccl.debug | quote }}
{{- with .Values.rollout.nccl.socketIfname }}
- name: NCCL_SOCKET_IFNAME
  value: {{ . | quote }}
{{- end }}
{{- if .Values.rollout.nccl.ibDisable }}
- name: NCCL_IB_DISABLE
  value: "1"
{{- end }}
{{- range $name, $value := .Values.rollout.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Ray writes session files, logs and spill files under /tmp and caches under $HOME (the working directory):
     both are emptyDirs, so the root filesystem stays read-only. */}}
{{- define "searchr1.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/searchr1
- name: dshm
  mountPath: /dev/shm
{{- if include "searchr1.usesData" . }}
- name: data
  mountPath: /data
{{- end }}
{{- end }}

{{- define "searchr1.rayVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- if include "searchr1.usesData" .ctx }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "searchr1.dataClaim" .ctx }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}
