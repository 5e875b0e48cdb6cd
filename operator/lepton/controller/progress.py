"""Reading a trainer's /progress endpoint (rank 0, over the pod network)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

MAX_BYTES = 64 * 1024


async def fetch_progress(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The JSON report, or None when the pod does not answer (starting, gone, unreachable)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as rsp,
        ):
            if rsp.status != 200:
                return None
            body = await rsp.content.read(MAX_BYTES)
            doc = json.loads(body)
            return doc if isinstance(doc, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None
