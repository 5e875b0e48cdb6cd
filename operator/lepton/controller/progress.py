"""Reading a trainer's /progress endpoint (rank 0, over the pod network), with the job's token."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from lepton.api.tokens import bearer

MAX_BYTES = 64 * 1024


async def fetch_progress(url: str, token: str | None = None, timeout: float = 2.0) -> dict[str, Any] | None:
    """The JSON report, or None when the pod does not answer (starting, gone, unreachable) or refuses
    the token (401: a pod of another job behind a reused IP, or a key that changed with a restart).

    `token` is the job's `lepton.api.tokens.progress_token`, sent as `Authorization: Bearer`; None
    sends no header (a trainer started without a token)."""
    headers = bearer(token) if token else None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url, headers=headers, allow_redirects=False) as rsp,
        ):
            if rsp.status != 200:
                return None
            body = await rsp.content.read(MAX_BYTES)
            doc = json.loads(body)
            return doc if isinstance(doc, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None


async def fetch_text(url: str, timeout: float = 2.0, max_bytes: int = 1024 * 1024) -> str | None:
    """A replica's Prometheus exposition (/metrics), or None when it does not answer 200."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url, allow_redirects=False) as rsp,
        ):
            if rsp.status != 200:
                return None
            return (await rsp.content.read(max_bytes)).decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None
