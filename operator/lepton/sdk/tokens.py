"""The per-job progress token: how a workload knows that a /progress request comes from its operator.

Secret-free: the token is HMAC-SHA256 of the job's UID under a key only the operator holds
(LEPTON_PROGRESS_KEY). The operator puts the token into the job's pods (env PROGRESS_TOKEN_ENV) and
sends it back as `Authorization: Bearer <token>`; the workload compares in constant time. A token
opens one job's endpoint and no other (UIDs differ), and nothing is stored in the cluster but the key.

Standard library only, so that user code (lepton.sdk) guards its endpoint the same way;
`lepton.api.tokens` re-exports these names for the operator's side.
"""

from __future__ import annotations

import hashlib
import hmac

from lepton.sdk import env

PROGRESS_TOKEN_ENV = env.PROGRESS_TOKEN  # in the workload's environment; unset: a local run, no token
AUTH_HEADER = "Authorization"
BEARER = "Bearer "


def progress_token(key: bytes, uid: str) -> str:
    """The token of the job with this UID (hex). Deterministic: the operator derives it again after a
    restart with the same key, so nothing has to be stored per job."""
    if not key:
        raise ValueError("the progress key must not be empty")
    if not uid:
        raise ValueError("a progress token needs the job's UID")
    return hmac.new(key, uid.encode(), hashlib.sha256).hexdigest()


def bearer(token: str) -> dict[str, str]:
    """The request header that carries a token."""
    return {AUTH_HEADER: BEARER + token}


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header value carries exactly this token (constant-time comparison)."""
    if header is None or not header.startswith(BEARER):
        return False
    return hmac.compare_digest(header[len(BEARER) :].encode(), token.encode())
