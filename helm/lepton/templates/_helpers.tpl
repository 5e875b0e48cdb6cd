{{- define "lepton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lepton.serviceAccountName" -}}
{{- default (include "lepton.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "lepton.selectorLabels" -}}
app.kubernetes.io/name: lepton-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lepton.progressKeySecret" -}}
{{- default (printf "%s-progress-key" (include "lepton.fullname" .)) .Values.progressKey.existingSecret -}}
{{- end -}}

{{- define "lepton.labels" -}}
{{ include "lepton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lepton
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Lepton's own resources (read, patch kopf's annotations and status; delete finished jobs after
their TTL) and the children it creates: training pods, their headless Services, gang PodGroups and,
with networkPolicy.enabled, each job's NetworkPolicy. */}}
{{- define "lepton.ownRules" -}}
- apiGroups: ["lepton.ai"]
  resources: [datasets, trainingjobs, tuningstudies, inferenceservices]
  verbs: [get, list, watch, patch]
# TuningStudy: its trials are TrainingJobs it creates, stops (suspend) and deletes (retention).
- apiGroups: ["lepton.ai"]
  resources: [trainingjobs]
  verbs: [create, delete]
# TuningStudy: the PVC holding its journal, when the spec names no storage.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# InferenceService: its Deployments, autoscaler and disruption budget (the pods are read above).
- apiGroups: ["apps"]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["autoscaling"]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["policy"]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Dataset: its preparation Jobs (their pods are read above, for the termination message).
- apiGroups: ["batch"]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Canary traffic split by weight, where the cluster serves the Gateway API.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: [httproutes]
  verbs: [get, create, patch, delete]
# InferenceService with serviceMonitor: true, where the Prometheus Operator's CRDs are installed.
- apiGroups: ["monitoring.coreos.com"]
  resources: [servicemonitors]
  verbs: [get, create, patch, delete]
- apiGroups: ["scheduling.k8s.io"]
  resources: [podgroups]
  verbs: [get, create, patch, delete]
{{- if .Values.networkPolicy.enabled }}
- apiGroups: ["networking.k8s.io"]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
{{- end }}
- apiGroups: ["lepton.ai"]
  resources: [datasets/status, trainingjobs/status, tuningstudies/status, inferenceservices/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: ["events.k8s.io"]
  resources: [events]
  verbs: [create]
{{- end -}}
