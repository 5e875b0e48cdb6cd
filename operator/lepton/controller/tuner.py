"""Talking to a study's tuner pod: one POST /v1/sync per pass, over the pod network, with the
study's token. Sampling runs in the tuner, so a slow sampler (GP, CMA-ES at thousands of trials)
delays only this study's pass, never the operator's event loop."""

from __future__ import annotations

import aiohttp

from lepton.api.tokens import bearer
from lepton.api.tuner import SyncReply, SyncRequest

MAX_BYTES = 4 * 1024 * 1024
SYNC_TIMEOUT = 60.0  # a GP sampler over thousands of trials may take this long to ask


class TunerError(Exception):
    """The tuner did not answer a sync (starting, gone, refusing): the words say which."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


async def sync(url: str, request: SyncRequest, token: str | None, timeout: float = SYNC_TIMEOUT) -> SyncReply:
    headers = {"Content-Type": "application/json", **(bearer(token) if token else {})}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.post(
                url, data=request.model_dump_json(by_alias=True), headers=headers, allow_redirects=False
            ) as rsp,  # fmt: skip
        ):
            body = await rsp.content.read(MAX_BYTES)
            if rsp.status != 200:
                raise TunerError(f"HTTP {rsp.status}: {body[:300].decode(errors='replace')}", rsp.status)
            return SyncReply.model_validate_json(body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TunerError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    except ValueError as exc:  # an answer that is not a SyncReply
        raise TunerError(f"unreadable reply: {exc}"[:300]) from exc
