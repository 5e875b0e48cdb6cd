"""P1: 500 TrainingJobs x 2 pods on kwok GPU nodes: submit -> all of a job's pods Running.

Two runs on one dedicated real control plane, in one process tree:
  baseline  the benchmark creates the very pods the operator would (same render, same PodGroups),
            itself, with no operator: the control plane's own limit (scheduler, kwok, apiserver);
  operator  the benchmark creates TrainingJobs and `leptonctl operator` does the rest.
Reports p50/p99 per run, their ratio, and the operator's CPU seconds and peak RSS.

    python -m benchmarks.trainingjob_gang_start --jobs 500
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
import uuid
from typing import Any

import aiohttp

from benchmarks.harness import Api, operator_process, timed_burst
from benchmarks.results import record
from lepton.api import TrainingJob
from lepton.api.validation import parse
from lepton.cli.devcluster import DevCluster
from lepton.render.trainingjob import RenderSettings, render

GPUS_PER_NODE = 8


def job_doc(i: int, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"job-{i:04d}", "namespace": ns, "uid": str(uuid.uuid4())},
        "spec": {
            "model": {"uri": "/models/tiny"},
            "data": {"uri": "/data/tickets.jsonl"},
            "hyperparameters": {"maxSteps": 100},
            "nodes": 2,
            "gpusPerNode": 1,
            "output": {"uri": f"s3://models/job-{i:04d}"},
        },
    }


def collection(obj: dict[str, Any]) -> str:
    ns = obj["metadata"]["namespace"]
    plural = {"Pod": "pods", "Service": "services", "PodGroup": "podgroups", "TrainingJob": "trainingjobs"}
    group = obj["apiVersion"]
    base = f"/api/{group}" if "/" not in group else f"/apis/{group}"
    return f"{base}/namespaces/{ns}/{plural[obj['kind']]}"


async def run(api: Api, ns: str, jobs: int, concurrency: int, direct: bool) -> list[float]:
    running: dict[str, set[str]] = {}
    settings = RenderSettings(gang_scheduling=True, termination_grace_seconds=1)

    async def submit(http: aiohttp.ClientSession, i: int) -> str:
        doc = job_doc(i, ns)
        if direct:
            model = parse(doc)
            assert isinstance(model, TrainingJob)
            for child in render(model, 0, settings):
                child["metadata"].pop("ownerReferences")  # no TrainingJob exists in this run
                async with http.post(collection(child), json=child) as rsp:
                    assert rsp.status == 201, await rsp.text()
        else:
            doc["metadata"].pop("uid")
            async with http.post(collection(doc), json=doc) as rsp:
                assert rsp.status == 201, await rsp.text()
        return str(doc["metadata"]["name"])

    def both_running(pod: dict[str, Any]) -> str | None:
        job = pod["metadata"].get("labels", {}).get("lepton.ai/name")
        if not job or pod.get("status", {}).get("phase") != "Running":
            return None
        running.setdefault(job, set()).add(pod["metadata"]["name"])
        return job if len(running[job]) == 2 else None

    return await timed_burst(api, f"/api/v1/namespaces/{ns}/pods", submit, both_running, count=jobs,
                             concurrency=concurrency, timeout=900, what="jobs had both pods Running")  # fmt: skip


def summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98], "max": samples[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    # Room for one run: each job takes 2 GPUs; one node has 8. The baseline's pods go before the next run.
    nodes = math.ceil(args.jobs * 2 / GPUS_PER_NODE) + 2
    cluster = DevCluster("lepton-p1")
    cluster.down()
    cluster.up(nodes=nodes, gpus_per_node=GPUS_PER_NODE)
    api = Api(cluster.kubeconfig)

    base_ns, op_ns = f"p1-direct-{uuid.uuid4().hex[:4]}", f"p1-operator-{uuid.uuid4().hex[:4]}"
    for ns in (base_ns, op_ns):
        cluster.kubectl("create", "namespace", ns)
    t0 = time.perf_counter()
    baseline = asyncio.run(run(api, base_ns, args.jobs, args.concurrency, direct=True))
    base_wall = time.perf_counter() - t0
    cluster.kubectl("delete", "namespace", base_ns, "--wait=true", "--timeout=600s")

    with operator_process(cluster.kubeconfig, op_ns) as usage:
        t0 = time.perf_counter()
        measured = asyncio.run(run(api, op_ns, args.jobs, args.concurrency, direct=False))
        op_wall = time.perf_counter() - t0
    cluster.down()

    b, m = summary(baseline), summary(measured)
    body = f"""
{args.jobs} jobs x 2 pods (1 GPU each) on {nodes} kwok GPU nodes of {GPUS_PER_NODE} GPUs, submitted at
concurrency {args.concurrency}; native gang scheduling (PodGroup minCount 2). Latency = submit -> both pods
Running (includes kwok's simulated 1-6 s container start).

| run | p50 s | p99 s | max s | wall s |
|---|---|---|---|---|
| baseline: the benchmark creates Service + PodGroup + 2 pods itself | {b["p50"]:.2f} | {b["p99"]:.2f} | {b["max"]:.2f} | {base_wall:.1f} |
| operator: TrainingJobs, `leptonctl operator` creates the rest | {m["p50"]:.2f} | {m["p99"]:.2f} | {m["max"]:.2f} | {op_wall:.1f} |
| ratio operator / baseline | {m["p50"] / b["p50"]:.2f}x | {m["p99"] / b["p99"]:.2f}x | | {op_wall / base_wall:.2f}x |

Operator process: {usage.cpu - usage.idle_cpu:.1f} CPU-seconds for {args.jobs} jobs ({usage.cpu:.1f} s with start-up), peak RSS {usage.rss_mib:.0f} MiB.
"""  # noqa: E501
    record(
        "P1 operator: TrainingJob gang start (issue 4)",
        body,
        f"python -m benchmarks.trainingjob_gang_start --jobs {args.jobs} --concurrency {args.concurrency}",
    )


if __name__ == "__main__":
    main()
