"""An InferenceService's request log as its server sees it (pure): the log directory, mounted
read-write when it is in a PVC, and the sampling, budget and masking settings."""

from __future__ import annotations

from lepton.api.contract import RequestLogConfig
from lepton.api.requestlog import RequestLogging
from lepton.render.common import Mounts


def request_log_config(logging: RequestLogging, mounts: Mounts) -> RequestLogConfig:
    """The server's RequestLogConfig; a PVC destination is added to `mounts` read-write. An s3
    destination is rejected by the API's rules before anything renders."""
    dest = logging.destination
    if dest.pvc is not None:
        directory = mounts.path(dest.pvc.claim_name, dest.pvc.path, read_only=False)
    elif dest.uri is not None:
        directory = dest.uri.removeprefix("file://")
    else:
        raise ValueError("logging.destination: s3 is not supported yet")
    return RequestLogConfig(
        directory=directory,
        sample_rate=logging.sample_rate,
        max_bytes_per_day=logging.max_bytes_per_day,
        max_file_bytes=logging.max_file_bytes,
        entities=list(logging.entities),
    )
