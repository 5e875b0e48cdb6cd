"""Leader election on a coordination.k8s.io Lease, so two operator replicas never both act.

The algorithm is client-go's: a candidate takes the Lease when it is absent, released, or has not been
renewed for its whole duration *as this process observed it* (local monotonic time, so no clock skew
between replicas matters); the leader renews it every `retry` seconds with the resourceVersion it read
(optimistic concurrency: of two writers one gets 409). A leader that cannot renew for `renew_deadline`
seconds (< duration) stops acting before anyone else may take over, and the process ends: the kubelet
restarts it as a candidate. Only the leader runs kopf at all; a standby holds no watch and writes nothing
but its attempts on the Lease.

Takeover after a leader dies without a word (SIGKILL, node loss): at most duration + retry seconds, plus
the new leader's start (its watches listing). After a clean stop (SIGTERM) the leader releases the Lease
and a standby takes over within `retry` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from lepton.controller.kube import KubeClient, KubeError

log = logging.getLogger("lepton.leader")
API_VERSION = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class LeaseTimings:
    duration: float = 15.0  # a silent leader's lease runs this long before a standby takes over
    renew_deadline: float = 10.0  # a leader unable to renew this long stops acting (< duration)
    retry: float = 2.0  # how often the leader renews and a standby tries

    @classmethod
    def of(cls, duration: float) -> LeaseTimings:
        """client-go's proportions (15 / 10 / 2 s) for any duration."""
        return cls(duration, duration * 2 / 3, max(0.2, duration / 7.5))


def micro_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claim(lease: Mapping[str, Any] | None, me: str, *, expired: bool, duration: float,
          now: datetime) -> dict[str, Any] | None:  # fmt: skip
    """The Lease spec that holds (or renews) leadership for `me`, or None while another holder's lease runs.
    `expired`: the current holder's renewal has not changed for a whole duration, as observed here."""
    spec = dict((lease or {}).get("spec") or {})
    holder = str(spec.get("holderIdentity") or "")
    if holder and holder != me and not expired:
        return None
    stamp, mine = micro_time(now), holder == me
    transitions = int(spec.get("leaseTransitions") or 0)
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions if mine or lease is None else transitions + 1,
    }


def released(lease: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """What a leader stopping cleanly writes: no holder, so a standby need not wait out the duration."""
    spec = dict(lease.get("spec") or {})
    return {**spec, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time(now)}


class LeadershipLostError(RuntimeError):
    pass


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, timings: LeaseTimings, *,
                 on_change: Callable[[bool], None] | None = None) -> None:  # fmt: skip
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.timings, self.on_change = timings, on_change or (lambda _: None)
        self.path = f"/apis/{API_VERSION}/namespaces/{namespace}/leases/{name}"
        self._seen: tuple[Any, ...] | None = None  # (holder, renewTime) last observed
        self._seen_at = 0.0  # monotonic time it last changed
        self._renewed = 0.0  # monotonic time of this process's last successful renewal
        self.leading = False

    async def _try(self) -> bool:
        """One attempt to take or renew the Lease; True when this process holds it afterwards."""
        started = time.monotonic()  # a renewal counts from before it was sent: never later than its write
        lease = await self.client.request("GET", self.path)
        now = time.monotonic()
        spec = (lease or {}).get("spec") or {}
        seen = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        duration = float(spec.get("leaseDurationSeconds") or self.timings.duration)
        wanted = claim(lease, self.identity, expired=now - self._seen_at >= duration,
                       duration=self.timings.duration, now=datetime.now(UTC))  # fmt: skip
        if wanted is None:
            return False
        body: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": wanted,
        }
        try:
            if lease is None:
                await self.client.request("POST", f"/apis/{API_VERSION}/namespaces/{self.namespace}/leases", body=body)
            else:
                body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
                await self.client.request("PUT", self.path, body=body)
        except KubeError as exc:
            if exc.status in (409, 422):  # another candidate wrote first: it leads
                return False
            raise
        self._renewed = started
        return True

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self.on_change(leading)

    async def acquire(self) -> None:
        """Return once this process leads."""
        log.info("waiting to lead (Lease %s/%s, as %s)", self.namespace, self.name, self.identity)
        while True:
            try:
                if await asyncio.wait_for(self._try(), timeout=self.timings.renew_deadline):
                    self._set(True)
                    log.info("leading (Lease %s/%s, as %s)", self.namespace, self.name, self.identity)
                    return
            except (KubeError, TimeoutError) as exc:
                log.warning("leader election: %s; trying again", exc or type(exc).__name__)
            await asyncio.sleep(self.timings.retry * random.uniform(1.0, 1.2))  # jitter: candidates spread

    async def hold(self) -> None:
        """Renew until leadership is lost; then raise LeadershipLostError (the caller must stop acting at once).
        Loss is declared at most renew_deadline + retry after the last renewal began: before any standby
        may take over (a whole duration after it saw that renewal)."""
        while True:
            await asyncio.sleep(self.timings.retry)
            left = self.timings.renew_deadline - (time.monotonic() - self._renewed)
            if left <= 0:
                self._set(False)
                raise LeadershipLostError(f"Lease {self.namespace}/{self.name} not renewed for "
                                     f"{self.timings.renew_deadline:.0f}s")  # fmt: skip
            try:
                held = await asyncio.wait_for(self._try(), timeout=left)
            except (KubeError, TimeoutError) as exc:
                log.warning("leader election: renewal failed: %s", exc or type(exc).__name__)
                continue
            if not held:
                self._set(False)
                raise LeadershipLostError(
                    f"Lease {self.namespace}/{self.name} is held by {self._seen[0] if self._seen else '?'}"
                )

    async def release(self) -> None:
        """Give the Lease up (a clean stop): a standby takes over without waiting out the duration."""
        if not self.leading:
            return
        self._set(False)
        try:
            lease = await self.client.request("GET", self.path)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = {**lease, "spec": released(lease, datetime.now(UTC))}
                await self.client.request("PUT", self.path, body=body)
                log.info("released Lease %s/%s", self.namespace, self.name)
        except KubeError as exc:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)


class LeaseKeeper:
    """The elector on a thread of its own, with its own event loop and client: renewals keep their
    rhythm however busy the operator's loop is (a burst of watch events can hold that loop for seconds,
    longer than a renew deadline). Losing the Lease ends the process from this thread at once, so no
    write of the operator's loop can follow the loss."""

    def __init__(self, info: kopf.ConnectionInfo, namespace: str, name: str, identity: str, timings: LeaseTimings,
                 *, user_agent: str, on_change: Callable[[bool], None] | None = None,
                 exit: Callable[[int], None] = os._exit) -> None:  # fmt: skip
        self.info, self.namespace, self.name, self.identity = info, namespace, name, identity
        self.timings, self.user_agent, self.on_change, self.exit = timings, user_agent, on_change, exit
        self.leading = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Release the Lease if held, and end the thread (a clean stop: a standby takes over at once)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        client = KubeClient(user_agent=self.user_agent)
        client.login(self.info)
        elector = LeaderElector(client, self.namespace, self.name, self.identity, self.timings,
                                on_change=self.on_change)  # fmt: skip
        stopping = asyncio.create_task(self._stop.wait())
        try:
            acquiring = asyncio.create_task(elector.acquire())
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not acquiring.done():  # stopped while standing by
                acquiring.cancel()
                return
            self.leading.set()
            holding = asyncio.create_task(elector.hold())
            await asyncio.wait({holding, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if holding.done():
                cause = holding.exception() if not holding.cancelled() else None
                log.critical("leadership lost (%s): exiting now so that nothing more is written; restarted, "
                             "this replica stands by again", cause)  # fmt: skip
                logging.shutdown()
                self.exit(1)
                return
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
            await elector.release()
        finally:
            stopping.cancel()
            await client.close()
