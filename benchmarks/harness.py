"""What the control-plane benchmarks share: a client for the real apiserver, a burst of creations timed
against a watch (closed loop at a concurrency, or open loop at a fixed rate), and the operator as a
measured subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from lepton.cli.devcluster import DevCluster


class Api:
    def __init__(self, kubeconfig: Path) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        self.server = cluster["server"]
        self.ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=self.server, connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )  # fmt: skip


Submit = Callable[[aiohttp.ClientSession, int], Awaitable[str]]


@dataclass
class Burst:
    latencies: list[float]  # each item's submit -> done seconds, sorted
    submit_seconds: float  # first submission started -> last one returned
    behind: float = 0.0  # at a fixed rate: the furthest a submission started behind its schedule, seconds


async def timed_burst(
    api: Api,
    watch_path: str,
    submit: Submit,
    arrived: Callable[[dict[str, Any]], str | None],
    *,
    count: int,
    concurrency: int,
    timeout: float,
    what: str,
) -> list[float]:
    """Submit `count` items (`submit(http, i)` creates item i and returns its key) at `concurrency`,
    while a watch on `watch_path` calls `arrived(obj)` on every event: the key it returns, if any, is
    done. Returns each item's submit -> done seconds, sorted."""
    burst = await timed_submissions(api, watch_path, submit, arrived, count=count, concurrency=concurrency,
                                    timeout=timeout, what=what)  # fmt: skip
    return burst.latencies


async def timed_submissions(
    api: Api,
    watch_path: str,
    submit: Submit,
    arrived: Callable[[dict[str, Any]], str | None],
    *,
    count: int,
    timeout: float,
    what: str,
    concurrency: int | None = None,
    rate: float | None = None,
) -> Burst:
    """timed_burst, closed or open loop: with `concurrency`, at most that many submissions in flight (each
    timed from when it starts); with `rate`, item i is submitted at i / rate seconds whatever the server
    does (open loop) and timed from that scheduled moment, so a client that falls behind cannot hide
    the wait (the furthest behind it fell is reported)."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency and rate")
    submitted: dict[str, float] = {}
    done_at: dict[str, float] = {}
    behind = 0.0
    finished = asyncio.Event()
    async with api.session() as http:
        async with http.get(watch_path) as rsp:
            rsp.raise_for_status()  # e.g. a resource the apiserver does not serve yet
            rv = (await rsp.json())["metadata"]["resourceVersion"]

        async def watch() -> None:
            nonlocal rv
            while True:  # the server may end a watch: resume from the last version seen
                params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
                async with http.get(watch_path, params=params) as rsp:
                    async for line in rsp.content:
                        obj = json.loads(line)["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        key = arrived(obj)
                        if key and key not in done_at:
                            done_at[key] = time.perf_counter()
                            if len(done_at) == count:
                                finished.set()
                                return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        gate = asyncio.Semaphore(concurrency or 1)
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal behind
            if rate is not None:
                due = t0 + i / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                behind = max(behind, time.perf_counter() - due)
                submitted[await submit(http, i)] = due
                return
            async with gate:
                started = time.perf_counter()
                submitted[await submit(http, i)] = started

        await asyncio.gather(*(one(i) for i in range(count)))
        submit_seconds = time.perf_counter() - t0
        try:
            await asyncio.wait_for(finished.wait(), timeout=timeout)
        except TimeoutError:
            raise SystemExit(f"only {len(done_at)}/{count} {what} within {timeout:.0f} s") from None
        finally:
            watcher.cancel()
    return Burst(sorted(done_at[k] - submitted[k] for k in submitted), submit_seconds, behind)


WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
_REQUESTS = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def apiserver_writes(api: Api) -> Counter[str]:
    """Write requests the apiserver has served since it started, by resource (its own
    apiserver_request_total: every client, the control plane's components included)."""
    async with api.session() as http, http.get("/metrics") as rsp:
        rsp.raise_for_status()
        text = await rsp.text()
    counts: Counter[str] = Counter()
    for found in _REQUESTS.finditer(text):
        labels = dict(_LABEL.findall(found["labels"]))
        if labels.get("verb") in WRITE_VERBS:
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            counts[f"{labels.get('resource', '')}{sub}"] += int(float(found["value"]))
    return counts


def audited_writes(cluster: DevCluster, namespace: str, agents: tuple[str, ...], prefix: str = "") -> Counter[str]:
    """Writes into `namespace` by clients whose user agent starts with one of `agents`, to objects whose
    name starts with `prefix`, from the dev cluster's audit log: "verb resource[/subresource]" -> count."""
    counts: Counter[str] = Counter()
    for event in cluster.audit_events(namespace):
        ref = event.get("objectRef") or {}
        if str(event.get("userAgent", "")).startswith(agents) and str(ref.get("name", "")).startswith(prefix):
            sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
            counts[f"{event['verb']} {ref.get('resource')}{sub}"] += 1
    return counts


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


@dataclass
class OperatorUsage:
    idle_cpu: float = 0.0  # CPU seconds spent starting up, before the measured run
    cpu: float = 0.0  # CPU seconds in all
    rss_mib: float = 0.0  # peak RSS
    pid: int = 0


@contextmanager
def operator_process(
    kubeconfig: Path, namespace: str, extra_env: dict[str, str] | None = None
) -> Iterator[OperatorUsage]:
    """`leptonctl operator` as deployed (a subprocess) watching `namespace`; its CPU and peak RSS are
    filled in when the block ends."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LEPTON_WATCH_NAMESPACES": namespace,
           "LEPTON_METRICS_PORT": "0", "LEPTON_LOG_LEVEL": "WARNING", **(extra_env or {})}  # fmt: skip
    op = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", "operator"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3)  # let kopf list and start watching
        usage = OperatorUsage(idle_cpu=proc_stats(op.pid)[0], pid=op.pid)
        yield usage
        usage.cpu, usage.rss_mib = proc_stats(op.pid)
    finally:
        op.terminate()
        op.wait(timeout=30)
