"""A small async Kubernetes REST client for the children the operator owns.

It reuses the credentials kopf logged in with (kopf.ConnectionInfo: kubeconfig or ServiceAccount), so
the operator authenticates once and in one way. Writes are server-side apply under one field manager.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from lepton.api.constants import MANAGER

FIELD_MANAGER = MANAGER
RETRIES = 4  # for 429, 5xx and lost connections; then the per-object loop backs off on its own
RETRYABLE = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
log = logging.getLogger("lepton.kube")


class KubeError(RuntimeError):
    """The apiserver answered an error (status >= 400), or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, reason: str = "", retry_after: float | None = None) -> None:
        self.status, self.message, self.reason, self.retry_after = status, message, reason, retry_after
        super().__init__(f"{status}: {message}")

    @property
    def rejected(self) -> bool:
        """The apiserver refused the request itself (invalid, forbidden): retrying the same won't help."""
        return 400 <= self.status < 500 and self.status not in (404, 409, 429)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(headers.get("Retry-After", ""))))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _ssl_context(info: kopf.ConnectionInfo, workdir: Path) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=info.ca_path) if info.ca_path else ssl.create_default_context()
    if info.ca_data:
        data = info.ca_data.encode() if isinstance(info.ca_data, str) else info.ca_data
        ctx.load_verify_locations(cadata=(data if b"BEGIN" in data else base64.b64decode(data)).decode())
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:  # ssl wants files
        cert, key = str(workdir / "client.crt"), str(workdir / "client.key")
        Path(cert).write_bytes(_as_bytes(info.certificate_data))
        Path(key).write_bytes(_as_bytes(info.private_key_data))
        Path(key).chmod(0o600)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


def api_path(api_version: str, plural: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    out = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


PLURALS = {
    "Pod": "pods",
    "Event": "events",
    "NetworkPolicy": "networkpolicies",
    "Service": "services",
    "PodGroup": "podgroups",
    "TrainingJob": "trainingjobs",
    "TuningStudy": "tuningstudies",
    "Dataset": "datasets",
    "InferenceService": "inferenceservices",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HTTPRoute": "httproutes",
    "ServiceMonitor": "servicemonitors",
    "Job": "jobs",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "EndpointSlice": "endpointslices",
}


@dataclass
class KubeClient:
    """Created from kopf's login; rebuilt when kopf logs in again (e.g. a rotated token)."""

    info: kopf.ConnectionInfo | None = None
    user_agent: str = "lepton-operator"  # with leader election, the replica's identity: audit logs tell who wrote
    _session: aiohttp.ClientSession | None = None
    _session_for: kopf.ConnectionInfo | None = None
    _tmp: tempfile.TemporaryDirectory[str] = field(default_factory=lambda: tempfile.TemporaryDirectory("lepton"))

    def login(self, info: kopf.ConnectionInfo) -> None:
        self.info = info

    async def _http(self) -> aiohttp.ClientSession:
        if self.info is None:
            raise KubeError(0, "not logged in yet")
        if self._session is None or self._session_for is not self.info:
            if self._session is not None:
                await self._session.close()
            headers = {"Authorization": f"Bearer {self.info.token}"} if self.info.token else {}
            headers["User-Agent"] = self.user_agent
            self._session = aiohttp.ClientSession(
                base_url=self.info.server,
                headers=headers,
                connector=aiohttp.TCPConnector(ssl=_ssl_context(self.info, Path(self._tmp.name)), limit=32),
                timeout=aiohttp.ClientTimeout(total=30),
            )
            self._session_for = self.info
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._tmp.cleanup()

    async def request(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:  # fmt: skip
        """One API call; 429 and 5xx answers and lost connections are retried (Retry-After honoured).
        None for a 404 on GET or DELETE."""
        for attempt in range(RETRIES + 1):
            try:
                return await self._request_once(method, path, body, content_type, params)
            except KubeError as exc:
                if (exc.status not in RETRYABLE and exc.status != 0) or attempt == RETRIES:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else 0.2 * 2**attempt
                log.debug("%s %s: %s; retry in %.1fs", method, path, exc, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _request_once(
        self, method: str, path: str, body: Any, content_type: str, params: Mapping[str, str] | None
    ) -> dict[str, Any] | None:
        http = await self._http()
        data = None if body is None else json.dumps(body)
        try:
            async with http.request(method, path, data=data, params=params,
                                    headers={"Content-Type": content_type}) as rsp:  # fmt: skip
                if rsp.status == 404 and method in ("DELETE", "GET"):
                    return None
                if rsp.status >= 400:
                    try:
                        doc = await rsp.json()
                        message, reason = str(doc.get("message", "")), str(doc.get("reason", ""))
                    except (aiohttp.ContentTypeError, json.JSONDecodeError, AttributeError):
                        message, reason = await rsp.text(), ""
                    wait = _retry_after(rsp.headers) if "Retry-After" in rsp.headers else None
                    raise KubeError(rsp.status, message, reason, wait)
                return dict(await rsp.json())
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise KubeError(0, f"apiserver unreachable: {exc or type(exc).__name__}") from exc

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", api_path(api_version, PLURALS[kind], namespace, name))

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST: fails with 409 when the name is taken, so nobody's object is ever taken over."""
        meta = obj["metadata"]
        path = api_path(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"))
        return await self.request("POST", path, body=obj, params={"fieldManager": FIELD_MANAGER})

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Server-side apply under the operator's field manager (creates, or corrects drift)."""
        meta = obj["metadata"]
        path = api_path(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"), meta["name"])
        return await self.request("PATCH", path, body=obj, content_type="application/apply-patch+yaml",
                                  params={"fieldManager": FIELD_MANAGER, "force": "true"})  # fmt: skip

    async def merge_patch(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch of `obj` (a null removes a field, whoever owns it)."""
        meta = obj["metadata"]
        path = api_path(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"), meta["name"])
        return await self.request("PATCH", path, body=patch, content_type="application/merge-patch+json",
                                  params={"fieldManager": FIELD_MANAGER})  # fmt: skip

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, grace: int | None = None) -> None:
        body = {"propagationPolicy": "Background"} | ({"gracePeriodSeconds": grace} if grace is not None else {})
        await self.request("DELETE", api_path(api_version, PLURALS[kind], namespace, name), body=body)

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Any) -> None:
        path = api_path(api_version, PLURALS[kind], namespace, name, "status")
        await self.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    async def serves(self, group_version: str, plural: str) -> bool | None:
        """Whether the cluster serves a resource (discovery), e.g. native gang scheduling's PodGroups;
        None when discovery failed, so the caller asks again instead of deciding on an error."""
        try:
            found = await self.request("GET", f"/apis/{group_version}")
        except KubeError as exc:
            log.warning("discovery of %s failed (%s); will ask again", group_version, exc)
            return None
        return found is not None and any(r.get("name") == plural for r in found.get("resources", []))
