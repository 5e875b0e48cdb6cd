"""Scale: 250 -> 2,000 TrainingJobs of mixed gang sizes on 1,250 kwok nodes of 8 GPUs (10,000 GPUs).

At each size (250, 500, 1,000, 2,000 jobs; gangs of 1, 2, 4 and 8 nodes in turn, 1 GPU per rank, so
2,000 jobs hold 7,500 pods and GPUs, all at once) two sides run on one dedicated real control plane,
alternating which goes first:
  direct    the benchmark creates the very objects the operator would (Service, PodGroup, pods) itself:
            the control plane's own limit at that rate;
  operator  a fresh `leptonctl operator` process, which first settles a standing population of 200
            InferenceServices and 50 TuningStudies (their Deployments, tuner pods and watches stay for
            the whole run), then the benchmark creates the TrainingJobs.
Both sides submit at the same fixed rate (open loop). Measured per side: submit -> all of a job's pods
Running (p50/p99); per job, the operator's CPU and its API writes (audit log, by user agent), and every
client's requests (the apiserver's own apiserver_request_total); the operator's peak RSS; and each
control-plane process's CPU over the run, to say which saturates first.

    python -m benchmarks.scale --sizes 250,500,1000,2000 --rate 8
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.harness import (
    Api,
    Burst,
    apiserver_writes,
    audited_writes,
    operator_process,
    proc_stats,
    timed_submissions,
)
from benchmarks.results import record
from benchmarks.trainingjob_gang_start import OPERATOR_AGENTS, Timed, job_doc, submit_job
from lepton.cli.devcluster import DevCluster

GANGS = (1, 2, 4, 8)  # nodes per job, in turn
GPUS_PER_NODE = 8
SETTLE_SECONDS = 3.0


def standing(ns: str, services: int, studies: int) -> list[dict[str, Any]]:
    """The operator side's other kinds: InferenceServices and TuningStudies it keeps reconciling."""
    docs: list[dict[str, Any]] = []
    for i in range(services):
        docs.append({"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService",
                     "metadata": {"name": f"svc-{i:03d}", "namespace": ns},
                     "spec": {"model": {"uri": "/models/tiny"}, "task": "causal-lm",
                              "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}})  # fmt: skip
    for i in range(studies):
        docs.append({"apiVersion": "lepton.ai/v1alpha1", "kind": "TuningStudy",
                     "metadata": {"name": f"study-{i:02d}", "namespace": ns},
                     "spec": {"objective": {"metric": "eval_loss", "direction": "minimize"},
                              "searchSpace": [{"name": "learningRate", "type": "float", "low": 0.0001,
                                               "high": 0.01, "log": True}],
                              "maxTrials": 4, "parallelism": 2,
                              "trialTemplate": {"trainingJob": {
                                  "model": {"uri": "/models/tiny"}, "data": {"uri": "/data/tickets.jsonl"},
                                  "hyperparameters": {"maxSteps": 10}, "nodes": 1, "gpusPerNode": 1,
                                  "output": {"uri": f"/output/study-{i:02d}"}}}}})  # fmt: skip
    return docs


async def create_all(api: Api, docs: list[dict[str, Any]]) -> None:
    plural = {"InferenceService": "inferenceservices", "TuningStudy": "tuningstudies"}
    async with api.session() as http:
        gate = asyncio.Semaphore(16)

        async def one(doc: dict[str, Any]) -> None:
            path = f"/apis/lepton.ai/v1alpha1/namespaces/{doc['metadata']['namespace']}/{plural[doc['kind']]}"
            async with gate, http.post(path, json=doc) as rsp:
                assert rsp.status == 201, await rsp.text()

        await asyncio.gather(*(one(d) for d in docs))


async def settled(api: Api, ns: str, timeout: float = 600) -> float:
    """Seconds until every standing object has a status phase (the operator has been through it)."""
    t0 = time.perf_counter()
    async with api.session() as http:
        while time.perf_counter() - t0 < timeout:
            pending = 0
            for plural in ("inferenceservices", "tuningstudies"):
                async with http.get(f"/apis/lepton.ai/v1alpha1/namespaces/{ns}/{plural}") as rsp:
                    pending += sum(not (o.get("status") or {}).get("phase") for o in (await rsp.json())["items"])
            if not pending:
                return time.perf_counter() - t0
            await asyncio.sleep(2)
    raise SystemExit(f"the standing InferenceServices and TuningStudies of {ns} did not settle in {timeout:.0f} s")


async def run(api: Api, ns: str, jobs: int, rate: float, direct: bool) -> Burst:
    running: dict[str, set[str]] = {}

    async def submit(http: aiohttp.ClientSession, i: int) -> str:
        return await submit_job(http, job_doc(i, ns, GANGS[i % len(GANGS)]), direct)

    def all_running(pod: dict[str, Any]) -> str | None:
        job = pod["metadata"].get("labels", {}).get("lepton.ai/name")
        if not job or not job.startswith("job-") or pod.get("status", {}).get("phase") != "Running":
            return None
        running.setdefault(job, set()).add(pod["metadata"]["name"])
        return job if len(running[job]) == GANGS[int(job[4:]) % len(GANGS)] else None

    return await timed_submissions(api, f"/api/v1/namespaces/{ns}/pods", submit, all_running, count=jobs,
                                   timeout=1800, what="jobs had all their pods Running", rate=rate)  # fmt: skip


async def requests_total(api: Api) -> int:
    """Every request the apiserver has served (all verbs, every client)."""
    async with api.session() as http, http.get("/metrics") as rsp:
        text = await rsp.text()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("apiserver_request_total{"))  # fmt: skip


async def wipe_pods(api: Api, ns: str, attempts: int = 20) -> None:
    """Every pod of the run gone (deletecollection, no grace) before its namespace goes: 7,500 pods
    deleted one request each would take longer than the run. A collection that large may outlast the
    apiserver's request timeout (504, part of it deleted): asked again until it completes."""
    async with api.session() as http:
        params = {"gracePeriodSeconds": "0", "propagationPolicy": "Background"}
        for _ in range(attempts):
            async with http.delete(f"/api/v1/namespaces/{ns}/pods", params=params) as rsp:
                if rsp.status == 200:
                    return
                if rsp.status not in (500, 503, 504):
                    rsp.raise_for_status()
        raise SystemExit(f"the pods of {ns} were not deleted in {attempts} deletecollections")


@contextmanager
def component_cpu(cluster: DevCluster) -> Iterator[dict[str, float]]:
    """CPU seconds each control-plane process spends inside the block."""
    before = {name: proc_stats(pid)[0] for name, (pid, _) in cluster.processes().items()}
    spent: dict[str, float] = {}
    yield spent
    for name, (pid, _) in cluster.processes().items():
        spent[name] = proc_stats(pid)[0] - before.get(name, 0.0)


@dataclass
class Side(Timed):
    jobs: int
    burst: Burst
    wall: float
    components: dict[str, float]  # control-plane CPU seconds over the run
    requests: int  # every client's, apiserver_request_total
    writes: Counter[str] = field(default_factory=Counter)  # every client's writes
    by_operator: Counter[str] = field(default_factory=Counter)
    operator_cpu: float = 0.0  # over the jobs (after the standing objects settled)
    operator_rss: float = 0.0
    standing_seconds: float = 0.0


def one_side(cluster: DevCluster, api: Api, side: str, jobs: int, args: argparse.Namespace) -> Side:
    ns = f"scale-{side}-{jobs}-{uuid.uuid4().hex[:4]}"
    cluster.kubectl("create", "namespace", ns)
    if side == "direct":
        requests0, writes0 = asyncio.run(requests_total(api)), asyncio.run(apiserver_writes(api))
        with component_cpu(cluster) as components:
            t0 = time.perf_counter()
            burst = asyncio.run(run(api, ns, jobs, args.rate, direct=True))
            wall = time.perf_counter() - t0
        result = Side(jobs, burst, wall, components, asyncio.run(requests_total(api)) - requests0,
                      asyncio.run(apiserver_writes(api)) - writes0)  # fmt: skip
    else:
        with operator_process(cluster.kubeconfig, ns) as usage:
            asyncio.run(create_all(api, standing(ns, args.services, args.studies)))
            standing_seconds = asyncio.run(settled(api, ns))
            time.sleep(SETTLE_SECONDS)
            requests0, writes0 = asyncio.run(requests_total(api)), asyncio.run(apiserver_writes(api))
            cpu0 = proc_stats(usage.pid)[0]
            with component_cpu(cluster) as components:
                t0 = time.perf_counter()
                burst = asyncio.run(run(api, ns, jobs, args.rate, direct=False))
                wall = time.perf_counter() - t0
                time.sleep(SETTLE_SECONDS)  # its last status writes count too
            cpu, rss = proc_stats(usage.pid)
        result = Side(jobs, burst, wall, components, asyncio.run(requests_total(api)) - requests0,
                      asyncio.run(apiserver_writes(api)) - writes0,
                      audited_writes(cluster, ns, OPERATOR_AGENTS, prefix="job-"),  # the jobs' own
                      cpu - cpu0, rss, standing_seconds)  # fmt: skip
    t1 = time.perf_counter()
    asyncio.run(wipe_pods(api, ns))
    # The namespace goes in the background: its pods, the load that matters to the next run, are gone.
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    time.sleep(SETTLE_SECONDS)
    print(f"  {side} {jobs}: {result.wall:.1f} s, p50 {result.p50:.1f} s, p99 {result.p99:.1f} s; pods deleted "
          f"in {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    return result


def report(args: argparse.Namespace, sizes: list[tuple[str, Side, Side]]) -> str:
    first = sizes[0][2]
    lines = [
        f"{args.nodes} kwok nodes of {GPUS_PER_NODE} GPUs ({args.nodes * GPUS_PER_NODE:,} GPUs). At each size, jobs of "
        f"{', '.join(map(str, GANGS))} nodes in turn (1 GPU per rank; 2,000 jobs hold 7,500 pods at once), submitted "
        f"at a fixed **{args.rate:g} jobs/s** on both sides (open loop); native gang scheduling. Latency = "
        "scheduled submit -> all of the job's pods Running (kwok's simulated 1-6 s container start included). "
        f"The operator side also keeps {args.services} InferenceServices and {args.studies} TuningStudies (created and "
        "settled before the jobs; their Deployments and tuner pods stay). One run per side per size, the order "
        "alternating; a fresh namespace and a fresh operator per run.",
        "",
        "| jobs | first | direct p50 / p99 s | operator p50 / p99 s | ratio p50 / p99 | operator CPU ms / job | "
        "operator peak RSS MiB | operator writes / job | requests / job direct / operator | wall s direct / operator |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for first_side, d, o in sizes:
        lines.append(
            f"| {o.jobs} | {first_side} | {d.p50:.1f} / {d.p99:.1f} | {o.p50:.1f} / {o.p99:.1f} | "
            f"{o.p50 / d.p50:.2f} / {o.p99 / d.p99:.2f} | {o.operator_cpu / o.jobs * 1000:.0f} | "
            f"{o.operator_rss:.0f} | "
            f"{sum(o.by_operator.values()) / o.jobs:.2f} | {d.requests / d.jobs:.0f} / {o.requests / o.jobs:.0f} | "
            f"{d.wall:.0f} / {o.wall:.0f} |"
        )
    last = sizes[-1][2]
    growth = (last.operator_cpu / last.jobs) / (first.operator_cpu / first.jobs)
    lines += [
        "",
        f"- growth from {first.jobs} to {last.jobs} jobs ({last.jobs / first.jobs:.0f}x): operator CPU per job "
        f"x{growth:.2f} ({'linear or better' if growth <= 1.1 else 'worse than linear'}), peak RSS "
        f"{first.operator_rss:.0f} -> {last.operator_rss:.0f} MiB (goal at 2,000 jobs: under 500), p99 ratio "
        f"{sizes[0][2].p99 / sizes[0][1].p99:.2f} -> {last.p99 / sizes[-1][1].p99:.2f} (goal: within 1.5)",
        "- the operator's writes per job, by what (largest size): "
        + ", ".join(f"{what} {n / last.jobs:.2f}" for what, n in last.by_operator.most_common()),
        f"- the standing objects settled in {', '.join(f'{o.standing_seconds:.0f}' for _, _, o in sizes)} s",
        "",
        "CPU seconds of each process over the run, as a share of the run's wall time (1.00 = one whole core; "
        "the machine has 2):",
        "",
        "| jobs | side | " + " | ".join(sorted(last.components)) + " | operator |",
        "|---|---|" + "---|" * (len(last.components) + 1),
    ]
    for _, d, o in sizes:
        for name, s in (("direct", d), ("operator", o)):
            shares = " | ".join(f"{s.components.get(c, 0.0) / s.wall:.2f}" for c in sorted(last.components))
            own = f"{s.operator_cpu / s.wall:.2f}" if name == "operator" else "-"
            lines.append(f"| {s.jobs} | {name} | {shares} | {own} |")
    busiest = max(last.components, key=lambda c: last.components[c])
    total = sum(last.components.values()) + last.operator_cpu
    lines += [
        "",
        f"At {last.jobs} jobs on the operator side the busiest process is **{busiest}** "
        f"({last.components[busiest] / last.wall:.2f} of a core); all processes together use "
        f"{total / last.wall:.2f} of the 2 cores.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250,500,1000,2000")
    parser.add_argument("--rate", type=float, default=8.0, help="jobs submitted per second, on both sides")
    parser.add_argument("--nodes", type=int, default=1250)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--cluster", default="lepton-scale", help="name of the dedicated dev cluster (deleted after)")
    args = parser.parse_args()
    cluster = DevCluster(args.cluster, audit_log_mb=4000)  # every write of the largest size, unrotated
    cluster.down()
    cluster.up(nodes=args.nodes, gpus_per_node=GPUS_PER_NODE)
    api = Api(cluster.kubeconfig)
    sizes: list[tuple[str, Side, Side]] = []
    try:
        for number, jobs in enumerate(int(s) for s in args.sizes.split(",")):
            order = ("direct", "operator") if number % 2 == 0 else ("operator", "direct")
            sides = {side: one_side(cluster, api, side, jobs, args) for side in order}
            sizes.append((order[0], sides["direct"], sides["operator"]))
            done = ",".join(str(d.jobs) for _, d, _ in sizes)
            record(  # after every size: a run cut short keeps what it measured, and says so
                "Scale: 250 -> 2,000 TrainingJobs on 1,250 kwok nodes (issue 13)",
                report(args, sizes)
                + ("" if done == args.sizes else f"\n\nSizes measured so far: {done} of {args.sizes}."),
                f"python -m benchmarks.scale --sizes {args.sizes} --rate {args.rate:g} --nodes {args.nodes} "
                f"--services {args.services} --studies {args.studies}",
            )
    finally:
        cluster.down()


if __name__ == "__main__":
    main()
