"""The lepton.ai/v1alpha1 API: pydantic models of the four kinds, their rules and CRD generation.

Imports only pydantic, PyYAML and the standard library: the operator, the local backend and the
workloads all depend on it.
"""

from lepton.api.kinds import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    Dataset,
    InferenceService,
    KindInfo,
    Resource,
    TrainingJob,
    TuningStudy,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Dataset",
    "InferenceService",
    "KindInfo",
    "Resource",
    "TrainingJob",
    "TuningStudy",
]
