"""The operator: kopf handlers, settings, metrics and health. The only layer that talks to Kubernetes."""
