"""Benchmark: time from creating a resource to its first status with observedGeneration.

Two runs against the same real local control plane, in one process tree:
  baseline  the benchmark itself patches each resource's status right after creating it: the floor
            the apiserver + etcd + watch path allows, with no operator;
  operator  `leptonctl operator` (a subprocess, as deployed) writes the status.
Reports p50/p99/max per run, their ratio, and the operator's CPU seconds and peak RSS (VmHWM).

    python -m benchmarks.operator_status_latency --count 500
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.harness import Api, operator_process, timed_burst
from benchmarks.results import record
from lepton.api import GROUP, VERSION
from lepton.cli.devcluster import DevCluster

ROOT = Path(__file__).resolve().parent.parent
# Datasets: their status comes from the operator's generic reconcile (no children yet), so this
# measures the watch -> handler -> status-patch path itself. TrainingJobs, which create pods, are P1.
TEMPLATE = yaml.safe_load((ROOT / "examples" / "dataset.yaml").read_text())
PLURAL = "datasets"


def path(ns: str, name: str = "", sub: str = "") -> str:
    out = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


async def run_once(api: Api, ns: str, count: int, concurrency: int, self_patch: bool) -> list[float]:
    async def create(http: aiohttp.ClientSession, i: int) -> str:
        body = copy.deepcopy(TEMPLATE)
        body["metadata"] = {"name": f"data-{i:04d}"}
        async with http.post(path(ns), json=body) as rsp:
            assert rsp.status == 201, await rsp.text()
        if self_patch:
            patch = {"status": {"observedGeneration": 1, "phase": "Pending"}}
            headers = {"Content-Type": "application/merge-patch+json"}
            async with http.patch(path(ns, body["metadata"]["name"], "status"), data=json.dumps(patch),
                                  headers=headers) as rsp:  # fmt: skip
                assert rsp.status == 200, await rsp.text()
        return str(body["metadata"]["name"])

    def observed(obj: dict[str, Any]) -> str | None:
        return obj["metadata"].get("name") if obj.get("status", {}).get("observedGeneration") == 1 else None

    return await timed_burst(api, path(ns), create, observed, count=count, concurrency=concurrency, timeout=300,
                             what="resources got a status")  # fmt: skip


def summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": q[49] * 1000,
        "p99": q[98] * 1000,
        "max": samples[-1] * 1000,
        "mean": statistics.mean(samples) * 1000,
    }


def namespace(cluster: DevCluster, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    return ns


def annotated(api: Api, ns: str) -> int:
    """Objects carrying any kopf bookkeeping annotation (diff-base, progress): the skeleton writes none."""

    async def count() -> int:
        async with api.session() as http, http.get(path(ns)) as rsp:
            items = (await rsp.json())["items"]
        return sum(any(k.startswith("lepton.ai/") for k in (o["metadata"].get("annotations") or {})) for o in items)

    return asyncio.run(count())


GOAL_RATE, GOAL_P99_MS = 250.0, 1000.0


def served(api: Api, timeout: float = 60) -> None:
    """Wait until the apiserver serves the kind (a fresh cluster answers 429 while storage initialises)."""

    async def poll() -> None:
        deadline = time.monotonic() + timeout
        async with api.session() as http:
            while True:
                async with http.get(f"/apis/{GROUP}/{VERSION}/{PLURAL}") as rsp:
                    if rsp.status == 200 or time.monotonic() > deadline:
                        return
                await asyncio.sleep(0.5)

    asyncio.run(poll())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="baseline and operator runs, alternating order")
    args = parser.parse_args()
    cluster = DevCluster(os.environ.get("LEPTON_TEST_CLUSTER", "lepton"))
    cluster.up()
    api = Api(cluster.kubeconfig)
    served(api)
    rows, ratios, notes = [], [], []
    for rnd in range(1, args.rounds + 1):
        results: dict[str, tuple[dict[str, float], float]] = {}
        for side in ("baseline", "operator") if rnd % 2 else ("operator", "baseline"):
            ns = namespace(cluster, f"bench-{side}")
            if side == "baseline":
                t0 = time.perf_counter()
                samples = asyncio.run(run_once(api, ns, args.count, args.concurrency, self_patch=True))
                results[side] = (summary(samples), time.perf_counter() - t0)
            else:
                with operator_process(cluster.kubeconfig, ns) as usage:
                    t0 = time.perf_counter()
                    samples = asyncio.run(run_once(api, ns, args.count, args.concurrency, self_patch=False))
                    results[side] = (summary(samples), time.perf_counter() - t0)
                notes.append(f"round {rnd}: operator {usage.cpu - usage.idle_cpu:.1f} CPU-s for {args.count} "
                             f"resources ({usage.cpu:.1f} s with start-up), peak RSS {usage.rss_mib:.0f} MiB; "
                             f"objects with a kopf annotation: {annotated(api, ns)} of {args.count}")  # fmt: skip
            cluster.kubectl("delete", "namespace", ns, "--wait=false")
        (b, bw), (m, mw) = results["baseline"], results["operator"]
        rows += [row(f"{rnd} baseline (no operator)", b, bw, args.count), row(f"{rnd} operator", m, mw, args.count)]
        ratios.append((m["p50"] / b["p50"], m["p99"] / b["p99"], mw / bw))
        rate, p99 = args.count / mw, m["p99"]
        verdict = "met" if rate >= GOAL_RATE and p99 < GOAL_P99_MS else "missed"
        notes.append(f"round {rnd}: operator drained {rate:.0f} creates/s (goal ≥ {GOAL_RATE:.0f}) with p99 "
                     f"{p99:.0f} ms (goal < {GOAL_P99_MS:.0f}): {verdict}")  # fmt: skip
    versions = cluster.component_versions()
    ratio_rows = "\n".join(f"| {i} | {p50:.2f}x | {p99:.2f}x | {wall:.2f}x |" for i, (p50, p99, wall) in
                           enumerate(ratios, 1))  # fmt: skip
    body = f"""
{args.count} Datasets created at concurrency {args.concurrency} against the real local control plane
({versions["kube-apiserver"]}, etcd {versions["etcd"].split()[-1]}, kwok), {args.rounds} rounds, the order of
the two runs alternating. Latency = POST sent → watch event carrying `status.observedGeneration: 1`.
baseline: the benchmark patches each status itself, right after creating it (no operator); operator:
`leptonctl operator` writes it (the event-driven skeleton: one status PATCH per object, no kopf
diff-base annotation).

| round / run | p50 ms | p99 ms | max ms | mean ms | wall s | creates/s |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

| round | p50 operator / baseline | p99 operator / baseline | wall operator / baseline |
|---|---|---|---|
{ratio_rows}

{chr(10).join(f"- {n}" for n in notes)}
"""
    record(
        "Operator: create → first status (issue 3)",
        body,
        f"python -m benchmarks.operator_status_latency --count {args.count} --concurrency {args.concurrency} "
        f"--rounds {args.rounds}",
    )


def row(label: str, r: dict[str, float], wall: float, count: int) -> str:
    cells = [f"{r[k]:.1f}" for k in ("p50", "p99", "max", "mean")] + [f"{wall:.1f}", f"{count / wall:.0f}"]
    return f"| {label} | {' | '.join(cells)} |"


if __name__ == "__main__":
    main()
