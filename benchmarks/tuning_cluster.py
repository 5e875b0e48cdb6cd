"""P4 (c) on the real local control plane: S studies x T trials at parallelism P, all submitted at once to
`leptonctl operator` (a fresh process): TrainingJobs created per second and the most trial pods running
at once, against Katib's 160 concurrent trial pods (kubeflow/katib#1328).

The tuners are real: each study's tuner pod lands on a fake node whose pod CIDR is loopback
(127.79.0.0/24), and this script runs `python -m lepton.workloads.tuner` for it, bound to the pod's IP
with the pod's own environment (its config and token; the RDB URL from the study's Secret: a SQLite
file per study), as tests/cluster/loopback.py does; the operator syncs with it over HTTP as in a cluster.
The trials are NOT trained: this measures throughput. A trial pod, once Running, is finished by kwok's
fake runtime after a fixed time (`lepton.ai/fake-outcome: Succeeded`, `lepton.ai/fake-after`) with a
TrainingSummary termination message `{"step": N, "metrics": {"eval_loss": x}}`, x drawn from an RNG
seeded by the trial's name. Trial pods land on untainted fake nodes (110 pods each) with loopback pod
CIDRs of their own, so the operator's progress reads get a refusal at once instead of a timeout.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import Api, proc_stats
from lepton.api.tuner import STORAGE_URL_ENV, TUNER_CONFIG_ENV
from lepton.cli.devcluster import DevCluster

TUNER_CIDR = "127.79.0.0/24"
TRIAL_CIDR = "127.{}.0.0/16"  # trial node i: 127.(80 + i).0.0/16
TUNER_NODE = "p4-tuner-node"
TUNER_PLACEMENT = {
    "nodeSelector": {"lepton.ai/bench-node": "tuners"},
    "tolerations": [{"key": "lepton.ai/bench-tuners", "operator": "Exists", "effect": "NoSchedule"}],
}
TRIAL_PLACEMENT = {"nodeSelector": {"lepton.ai/bench-node": "trials"}}
PODS_PER_NODE = 110
KATIB_PODS = 160
TRIAL_STEPS = 100
GROUP = "/apis/lepton.ai/v1alpha1"


def node(name: str, cidr: str, role: str, taint: str | None = None) -> dict[str, Any]:
    resources = {"cpu": "1000", "memory": "10Ti", "pods": str(PODS_PER_NODE)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name, "lepton.ai/bench-node": role}},
        "spec": {"podCIDR": cidr, "taints": [{"key": taint, "value": "true", "effect": "NoSchedule"}] if taint else []},
        "status": {"capacity": resources, "allocatable": resources},
    }  # fmt: skip


def study_doc(i: int, trials: int, parallelism: int) -> dict[str, Any]:
    name = f"s{i:02d}"
    template = {
        "model": {"uri": "/models/tiny"}, "data": {"uri": "/data/tickets.jsonl"},
        "hyperparameters": {"maxSteps": TRIAL_STEPS, "evalEverySteps": 20}, "nodes": 1, "gpusPerNode": 0,
        "backend": "gloo", "scheduling": TRIAL_PLACEMENT, "output": {"uri": f"/output/{name}"},
    }  # fmt: skip
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "objective": {"metric": "eval_loss", "direction": "minimize"},
            "searchSpace": [
                {"name": "learningRate", "type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                {"name": "warmupSteps", "type": "int", "low": 0, "high": 20, "step": 5},
            ],
            "sampler": {"type": "tpe", "seed": i},
            "pruner": {"type": "none"},
            "maxTrials": trials,
            "parallelism": parallelism,
            "storage": {"urlSecretRef": {"name": f"{name}-db", "key": "url"}},
            "scheduling": TUNER_PLACEMENT,
            "trialTemplate": {"trainingJob": template},
        },
    }


@dataclass
class ClusterRun:
    studies: int
    trials: int
    parallelism: int
    trial_seconds: float
    nodes: int
    created: list[float] = field(default_factory=list)  # seconds after the first submission, per TrainingJob
    running_now: int = 0
    peak: int = 0
    peak_at: float = 0.0
    full_at: float | None = None  # first moment studies x parallelism trial pods ran at once
    done_at: float | None = None
    succeeded: int = 0
    tuners_started: int = 0
    tuner_failures: list[str] = field(default_factory=list)
    operator_cpu: float = 0.0
    operator_rss: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, trial pods running), on change

    @property
    def wanted(self) -> int:
        return self.studies * self.parallelism

    def mean_running(self, start: float, end: float) -> float:
        """Trial pods running on average (time-weighted) between `start` and `end` seconds."""
        if end <= start:
            return math.nan
        area, level, at = 0.0, 0, start
        for t, n in self.timeline:
            if t > start:
                area += level * (min(t, end) - at)
                at = min(t, end)
            if t >= end:
                break
            level = n
        area += level * (end - at)
        return area / (end - start)

    def rate(self, first: int, last: int) -> float:
        """TrainingJobs per second between the first-th and last-th creation (1-based)."""
        times = sorted(self.created)
        if len(times) < last or last <= first:
            return math.nan
        return (last - first) / max(times[last - 1] - times[first - 1], 1e-9)


def value_of(trial: str, seed: int) -> float:
    return round(random.Random(f"{seed}/{trial}").uniform(0.5, 3.0), 6)


class Runtime:
    """What stands in for kubelets: real tuners for tuner pods, the fake runtime's ending for trial pods."""

    def __init__(self, ns: str, urls: dict[str, str], workdir: Path, result: ClusterRun, seed: int) -> None:
        self.ns, self.urls, self.workdir, self.result, self.seed = ns, urls, workdir, result, seed
        self.tuners: dict[str, subprocess.Popen[bytes]] = {}  # pod UID -> process
        self.running: set[str] = set()
        self.finishing: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def on_pod(self, kind: str, pod: dict[str, Any], http: aiohttp.ClientSession) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        labels, uid = meta.get("labels") or {}, meta["uid"]
        gone = kind == "DELETED" or bool(meta.get("deletionTimestamp"))
        component = labels.get("app.kubernetes.io/component")
        if component == "tuner":
            proc = self.tuners.get(uid)
            if gone and proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the kubelet's stop
            elif not gone and proc is None and status.get("phase") == "Running" and status.get("podIP"):
                self._start_tuner(pod)
            return
        if component != "trainer":
            return
        was = len(self.running)
        if not gone and status.get("phase") == "Running":
            self.running.add(uid)
            if uid not in self.finishing:
                self.finishing.add(uid)
                task = asyncio.create_task(self._finish(http, meta["name"], labels.get("lepton.ai/name", "")))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        else:
            self.running.discard(uid)
        if len(self.running) != was:
            r, t = self.result, self.now()
            r.timeline.append((t, len(self.running)))
            if len(self.running) > r.peak:
                r.peak, r.peak_at = len(self.running), t
            if r.full_at is None and len(self.running) >= r.wanted:
                r.full_at = t

    async def _finish(self, http: aiohttp.ClientSession, pod: str, trial: str) -> None:
        message = json.dumps({"step": TRIAL_STEPS, "metrics": {"eval_loss": value_of(trial, self.seed)}})
        notes = {"lepton.ai/fake-outcome": "Succeeded", "lepton.ai/fake-after": f"{self.result.trial_seconds:g}s",
                 "lepton.ai/fake-message": message}  # fmt: skip
        async with http.patch(f"/api/v1/namespaces/{self.ns}/pods/{pod}", data=json.dumps({"metadata": {
                "annotations": notes}}), headers={"Content-Type": "application/merge-patch+json"}) as rsp:  # fmt: skip
            if rsp.status >= 300 and rsp.status != 404:
                self.result.tuner_failures.append(f"patch {pod}: {rsp.status} {await rsp.text()}")

    def _start_tuner(self, pod: dict[str, Any]) -> None:
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        config = json.loads(env[TUNER_CONFIG_ENV]) | {"host": ip}
        env |= {TUNER_CONFIG_ENV: json.dumps(config), STORAGE_URL_ENV: self.urls[name.removesuffix("-tuner")],
                "HOME": str(self.workdir)}  # fmt: skip
        log = (self.workdir / f"{name}.log").open("ab")
        self.tuners[pod["metadata"]["uid"]] = subprocess.Popen(
            [sys.executable, "-m", "lepton.workloads.tuner"], env={**os.environ, **env}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.result.tuners_started += 1

    def stop(self) -> None:
        for proc in self.tuners.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def watch(http: aiohttp.ClientSession, path: str, on_event: Callable[[str, dict[str, Any]], None],
                ready: asyncio.Event) -> None:  # fmt: skip
    """Every event on `path` (list first: its items count as ADDED), resuming where the server ended it."""
    async with http.get(path) as rsp:
        rsp.raise_for_status()
        listed = await rsp.json()
    rv = listed["metadata"]["resourceVersion"]
    for item in listed["items"]:
        on_event("ADDED", item)
    ready.set()
    while True:
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        async with http.get(path, params=params) as rsp:
            async for line in rsp.content:
                event = json.loads(line)
                rv = event["object"]["metadata"].get("resourceVersion", rv)
                if event["type"] != "BOOKMARK":
                    on_event(event["type"], event["object"])


async def measure(api: Api, ns: str, result: ClusterRun, *, workdir: Path, timeout: float, seed: int,
                  progress: Callable[[str], None]) -> None:  # fmt: skip
    urls = {f"s{i:02d}": f"sqlite:///{workdir / f's{i:02d}.db'}" for i in range(result.studies)}
    runtime = Runtime(ns, urls, workdir, result, seed)
    finished: set[str] = set()
    all_done = asyncio.Event()
    async with api.session() as http:

        def on_job(kind: str, job: dict[str, Any]) -> None:
            if kind == "ADDED":
                result.created.append(runtime.now())

        def on_study(kind: str, study: dict[str, Any]) -> None:
            if (study.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                finished.add(study["metadata"]["name"])
                if len(finished) == result.studies:
                    result.done_at = result.done_at or runtime.now()
                    all_done.set()

        watches = [(f"/api/v1/namespaces/{ns}/pods", lambda k, o: runtime.on_pod(k, o, http)),
                   (f"{GROUP}/namespaces/{ns}/trainingjobs", on_job),
                   (f"{GROUP}/namespaces/{ns}/tuningstudies", on_study)]  # fmt: skip
        readies = [asyncio.Event() for _ in watches]
        tasks = [
            asyncio.create_task(watch(http, path, fn, ready))
            for (path, fn), ready in zip(watches, readies, strict=True)
        ]
        await asyncio.gather(*(r.wait() for r in readies))
        for name, url in urls.items():
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-db"},
                "stringData": {"url": url},
            }
            await _post(http, f"/api/v1/namespaces/{ns}/secrets", secret)
        runtime.t0 = time.perf_counter()
        studies = [study_doc(i, result.trials, result.parallelism) for i in range(result.studies)]
        await asyncio.gather(*(_post(http, f"{GROUP}/namespaces/{ns}/tuningstudies", doc) for doc in studies))
        progress_task = asyncio.create_task(_report(runtime, finished, progress))
        try:
            await asyncio.wait_for(all_done.wait(), timeout=timeout)
        except TimeoutError:
            progress(f"timed out after {timeout:.0f} s: {len(finished)}/{result.studies} studies finished")
        finally:
            progress_task.cancel()
            for task in tasks:
                task.cancel()
            runtime.stop()
    result.succeeded = len(finished)


async def _post(http: aiohttp.ClientSession, path: str, doc: dict[str, Any]) -> None:
    async with http.post(path, json=doc) as rsp:
        if rsp.status != 201:
            raise SystemExit(f"POST {path}: {rsp.status} {await rsp.text()}")


async def _report(runtime: Runtime, finished: set[str], progress: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(15)
        r = runtime.result
        progress(f"  {runtime.now():.0f} s: {len(r.created)} TrainingJobs created, {len(runtime.running)} trial pods "
                 f"running (peak {r.peak}), {len(finished)}/{r.studies} studies finished")  # fmt: skip


def run(cluster: DevCluster, *, studies: int, trials: int, parallelism: int, trial_seconds: float, seed: int,
        workdir: Path, timeout: float, progress: Callable[[str], None]) -> ClusterRun:  # fmt: skip
    """One measured run on `cluster` (already up): nodes, a namespace, a fresh operator, the studies."""
    nodes = math.ceil(studies * parallelism / (PODS_PER_NODE - 10)) + 1
    existing = set(cluster.kubectl("get", "nodes", "-o", "name").stdout.split())
    wanted = [node(TUNER_NODE, TUNER_CIDR, "tuners", taint="lepton.ai/bench-tuners")]
    wanted += [node(f"p4-trial-node-{i}", TRIAL_CIDR.format(80 + i), "trials") for i in range(nodes)]
    for doc in wanted:
        if f"node/{doc['metadata']['name']}" not in existing:
            cluster.kubectl("create", "-f", "-", stdin=json.dumps(doc))  # POST: apply would reset the status
    cluster.kubectl("wait", "--for=condition=Ready", "nodes", "-l", "lepton.ai/bench-node", "--timeout=60s")
    ns = f"p4-{int(time.time())}"
    cluster.kubectl("create", "namespace", ns)
    result = ClusterRun(studies, trials, parallelism, trial_seconds, nodes)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LEPTON_WATCH_NAMESPACES": ns,
           "LEPTON_METRICS_PORT": "0", "LEPTON_LOG_LEVEL": "WARNING"}  # fmt: skip
    with (workdir / "operator.log").open("wb") as log:
        op = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", "operator"], env=env, stdout=log, stderr=log)
    try:
        time.sleep(3)  # let it list and start watching
        idle = proc_stats(op.pid)[0]
        asyncio.run(measure(Api(cluster.kubeconfig), ns, result, workdir=workdir, timeout=timeout, seed=seed,
                            progress=progress))  # fmt: skip
        cpu, result.operator_rss = proc_stats(op.pid)
        result.operator_cpu = cpu - idle
    finally:
        op.terminate()
        op.wait(timeout=30)
    return result
