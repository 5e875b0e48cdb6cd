"""Lepton: a Kubernetes-native AI platform (datasets, distributed training, tuning, serving)."""

__version__ = "0.1.0"
