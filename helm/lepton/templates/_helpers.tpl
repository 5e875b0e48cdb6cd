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
# InferenceService at zero replicas: Service NAME loses its selector (a merge patch, services' patch
# above) and its endpoints are an EndpointSlice NAME-activator the operator owns, listing the addresses
# it reads off the activator Service's own slices (listed by label, so no resourceNames). Its own slice
# is read by name, never watched: a watch would bring every endpoint change of the cluster.
- apiGroups: ["discovery.k8s.io"]
  resources: [endpointslices]
  verbs: [get, list, create, patch, delete]
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

{{/* The activator: holds requests for InferenceServices at zero replicas (activator.enabled). */}}
{{- define "lepton.activator.fullname" -}}
{{- printf "%s-activator" (include "lepton.fullname" . | trunc 53 | trimSuffix "-") -}}
{{- end -}}

{{- define "lepton.activator.serviceAccountName" -}}
{{- default (include "lepton.activator.fullname" .) .Values.activator.serviceAccount.name -}}
{{- end -}}

{{- define "lepton.activator.selectorLabels" -}}
app.kubernetes.io/name: lepton-activator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lepton.activator.labels" -}}
{{ include "lepton.activator.selectorLabels" . }}
app.kubernetes.io/component: activator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lepton
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What the activator does with the API, and nothing more: read the InferenceService a request names
(by name in its namespace, or listed by metadata.name across namespaces for a bare Host), list its
primary's pods by label (to probe each one's /v2/health/ready), and read and set the primary
Deployment's replica count through the scale subresource (0 -> 1). It never writes a Deployment
itself, never watches, never reads Secrets. */}}
{{- define "lepton.activator.rules" -}}
- apiGroups: ["lepton.ai"]
  resources: [inferenceservices]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: ["apps"]
  resources: [deployments/scale]
  verbs: [get, patch]
{{- end -}}
