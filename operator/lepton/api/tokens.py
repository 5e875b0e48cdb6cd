"""The per-job progress token (see `lepton.sdk.tokens`, where it lives so that user code can check it
with the standard library alone): the operator derives it with `progress_token` and sends it with
`bearer`; workloads check it with `authorized`."""

from __future__ import annotations

from lepton.sdk.tokens import AUTH_HEADER, BEARER, PROGRESS_TOKEN_ENV, authorized, bearer, progress_token

__all__ = ["AUTH_HEADER", "BEARER", "PROGRESS_TOKEN_ENV", "authorized", "bearer", "progress_token"]
