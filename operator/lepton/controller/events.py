"""Kubernetes Events about Lepton resources, rate-limited per object, so `kubectl describe` tells what
happened without flooding the apiserver when something flaps.

Messages come from status (already free of secrets). Posting an event never fails a reconcile.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from lepton.api.constants import MANAGER
from lepton.controller.kube import KubeClient, KubeError, api_path
from lepton.status.plan import EventNote

BURST = 12  # events an object may post at once
REFILL_SECONDS = 10.0  # then one more per this many seconds
REPEAT_SECONDS = 300.0  # the same reason and message again within this window is dropped
MAX_MESSAGE = 1024
log = logging.getLogger("lepton.events")


class EventRecorder:
    def __init__(self, client: KubeClient, clock: Any = time.monotonic) -> None:
        self.client, self.clock = client, clock
        self._tokens: dict[tuple[str, str, str], tuple[float, float]] = {}  # key -> (tokens, at)
        self._recent: dict[tuple[str, str, str, str, str], float] = {}

    def _allow(self, key: tuple[str, str, str], note: EventNote) -> bool:
        now = self.clock()
        repeat = (*key, note.reason, note.message)
        if now - self._recent.get(repeat, -REPEAT_SECONDS) < REPEAT_SECONDS:
            return False
        tokens, at = self._tokens.get(key, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) / REFILL_SECONDS)
        if tokens < 1:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1, now)
        self._recent[repeat] = now
        return True

    def forget(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        self._tokens.pop(key, None)
        self._recent = {k: v for k, v in self._recent.items() if k[:3] != key}

    async def post(self, obj: Mapping[str, Any], notes: Sequence[EventNote]) -> int:
        """Post what the rate limit allows; returns how many were posted."""
        meta = obj.get("metadata") or {}
        kind, namespace, name = str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name"))
        posted = 0
        for note in notes:
            if not self._allow((kind, namespace, name), note):
                continue
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": kind,
                    "name": name,
                    "namespace": namespace,
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": note.reason,
                "message": note.message[:MAX_MESSAGE],
                "type": note.type,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "source": {"component": MANAGER},
                "reportingComponent": MANAGER,
                "reportingInstance": MANAGER,
            }
            try:
                await self.client.request("POST", api_path("v1", "events", namespace), body=event)
                posted += 1
            except KubeError as exc:  # an event is worth a log line, never a failed reconcile
                if exc.status == 403 and "being terminated" in exc.message:
                    continue  # the namespace is going away, and its events with it: nothing to tell
                log.warning("event %s for %s %s/%s not posted: %s", note.reason, kind, namespace, name, exc)
        return posted
