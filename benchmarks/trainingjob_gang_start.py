"""P1: 500 TrainingJobs x 2 pods on kwok GPU nodes: submit -> all of a job's pods Running.

Two sides on one dedicated real control plane, in one process tree:
  direct    the benchmark creates the very objects the operator would (same render: Service, PodGroup,
            pods), itself, with no operator: the control plane's own limit (scheduler, kwok, apiserver);
  operator  the benchmark creates TrainingJobs and `leptonctl operator` (a fresh process each run) does
            the rest.
Both sides submit at the same fixed rate (--rate jobs/s, open loop: job i at i / rate seconds, timed from
that moment), so the latency measures the path, not a queue the benchmark built itself. --rounds rounds
alternate the order (direct first in round 1, operator first in round 2, ...); every run gets a fresh
namespace, deleted (its pods gone) before the next. Reports p50/p99 per side per round, the operator /
direct ratio per round with their geometric mean, 95% confidence interval (Student's t on the log ratios)
and spread, and the operator's CPU seconds and peak RSS per round.

    python -m benchmarks.trainingjob_gang_start --jobs 500 --rate 5 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.harness import (
    Api,
    Burst,
    OperatorUsage,
    apiserver_writes,
    audited_writes,
    operator_process,
    timed_submissions,
)
from benchmarks.results import record
from benchmarks.stats import ratio_estimate
from lepton.api import TrainingJob
from lepton.api.validation import parse
from lepton.cli.devcluster import DevCluster
from lepton.render.trainingjob import RenderSettings, render

GPUS_PER_NODE = 8
SETTLE_SECONDS = 3.0
OPERATOR_AGENTS = ("lepton-operator", "kopf")  # the operator's client and kopf's own (its Events)


def job_doc(i: int, ns: str, nodes: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"job-{i:04d}", "namespace": ns, "uid": str(uuid.uuid4())},
        "spec": {
            "model": {"uri": "/models/tiny"},
            "data": {"uri": "/data/tickets.jsonl"},
            "hyperparameters": {"maxSteps": 100},
            "nodes": nodes,
            "gpusPerNode": 1,
            "output": {"uri": f"/output/job-{i:04d}"},
        },
    }


def collection(obj: dict[str, Any]) -> str:
    ns = obj["metadata"]["namespace"]
    plural = {"Pod": "pods", "Service": "services", "PodGroup": "podgroups", "TrainingJob": "trainingjobs"}
    group = obj["apiVersion"]
    base = f"/api/{group}" if "/" not in group else f"/apis/{group}"
    return f"{base}/namespaces/{ns}/{plural[obj['kind']]}"


async def submit_job(http: aiohttp.ClientSession, doc: dict[str, Any], direct: bool) -> str:
    """Direct: create the objects the operator would make of `doc` (its own render, with the operator's
    default settings); otherwise the TrainingJob itself. Returns the job's name."""
    if direct:
        model = parse(doc)
        assert isinstance(model, TrainingJob)
        for child in render(model, 0, RenderSettings(gang_scheduling=True)):
            child["metadata"].pop("ownerReferences")  # no TrainingJob exists in this run
            async with http.post(collection(child), json=child) as rsp:
                assert rsp.status == 201, await rsp.text()
    else:
        doc["metadata"].pop("uid")
        async with http.post(collection(doc), json=doc) as rsp:
            assert rsp.status == 201, await rsp.text()
    return str(doc["metadata"]["name"])


async def run(api: Api, ns: str, jobs: int, pace: dict[str, Any], direct: bool) -> Burst:
    running: dict[str, set[str]] = {}

    async def submit(http: aiohttp.ClientSession, i: int) -> str:
        return await submit_job(http, job_doc(i, ns), direct)

    def both_running(pod: dict[str, Any]) -> str | None:
        job = pod["metadata"].get("labels", {}).get("lepton.ai/name")
        if not job or pod.get("status", {}).get("phase") != "Running":
            return None
        running.setdefault(job, set()).add(pod["metadata"]["name"])
        return job if len(running[job]) == 2 else None

    return await timed_submissions(api, f"/api/v1/namespaces/{ns}/pods", submit, both_running, count=jobs,
                                   timeout=900, what="jobs had both pods Running", **pace)  # fmt: skip


def quantiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) seconds."""
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49], q[98]


class Timed:
    """A side of a run whose jobs were timed: its latency quantiles."""

    burst: Burst

    @property
    def p50(self) -> float:
        return quantiles(self.burst.latencies)[0]

    @property
    def p99(self) -> float:
        return quantiles(self.burst.latencies)[1]


@dataclass
class Side(Timed):
    burst: Burst
    wall: float  # the run: watch set-up, submissions, until the last job has both pods Running
    usage: OperatorUsage | None = None  # the operator side only
    writes: Counter[str] = field(default_factory=Counter)  # the apiserver's write requests, every client
    by_operator: Counter[str] = field(default_factory=Counter)  # the operator's own writes (audit log)


@dataclass
class Round:
    first: str
    direct: Side
    operator: Side


def pace(args: argparse.Namespace) -> dict[str, Any]:
    return {"concurrency": args.concurrency} if args.concurrency else {"rate": args.rate}


def one_side(cluster: DevCluster, api: Api, side: str, number: int, args: argparse.Namespace) -> Side:
    ns = f"p1-{side}-r{number}-{uuid.uuid4().hex[:4]}"
    cluster.kubectl("create", "namespace", ns)
    usage = None
    before = asyncio.run(apiserver_writes(api))
    t0 = time.perf_counter()
    if side == "direct":
        burst = asyncio.run(run(api, ns, args.jobs, pace(args), direct=True))
        wall = time.perf_counter() - t0
    else:
        with operator_process(cluster.kubeconfig, ns) as usage:
            t0 = time.perf_counter()
            burst = asyncio.run(run(api, ns, args.jobs, pace(args), direct=False))
            wall = time.perf_counter() - t0
            time.sleep(SETTLE_SECONDS)  # its last status patches (every job Running) count too
    writes = asyncio.run(apiserver_writes(api)) - before
    by_operator = audited_writes(cluster, ns, OPERATOR_AGENTS) if side == "operator" else Counter()
    # The operator is stopped first, so it neither works on nor is charged for the deletion. The pods go at
    # once (kwok would honour their grace period), then the namespace, before the next run starts.
    t1 = time.perf_counter()
    cluster.kubectl("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force", "--wait=false")
    cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=600s")
    print(f"  {side}: {wall:.1f} s, namespace deleted in {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    return Side(burst, wall, usage, writes, by_operator)


def report(args: argparse.Namespace, nodes: int, rounds: list[Round]) -> str:
    r50 = ratio_estimate([r.operator.p50 / r.direct.p50 for r in rounds])
    r99 = ratio_estimate([r.operator.p99 / r.direct.p99 for r in rounds])
    pooled = {side: quantiles([x for r in rounds for x in getattr(r, side).burst.latencies])
              for side in ("direct", "operator")}  # fmt: skip
    cpu = [r.operator.usage.cpu - r.operator.usage.idle_cpu for r in rounds if r.operator.usage]
    rss = [r.operator.usage.rss_mib for r in rounds if r.operator.usage]
    behind = max(max(r.direct.burst.behind, r.operator.burst.behind) for r in rounds)
    if args.concurrency:
        how = (f"Both sides submit as fast as the apiserver answers, **{args.concurrency} submissions in flight** "
               "(closed loop; each job timed from its submission). ")  # fmt: skip
    else:
        how = (f"Both sides submit at a fixed **{args.rate:g} jobs/s** (open loop, {args.jobs / args.rate:.0f} s of "
               f"submissions; the client fell at most {behind * 1000:.0f} ms behind its schedule). ")  # fmt: skip
    per_job = [sum(r.operator.by_operator.values()) / args.jobs for r in rounds]
    lines = [
        f"{args.jobs} jobs x 2 pods (1 GPU each) on {nodes} kwok GPU nodes of {GPUS_PER_NODE} GPUs; native gang "
        f"scheduling (PodGroup minCount 2). {how}Latency = submit -> both pods Running (includes "
        "kwok's simulated 1-6 s container start). "
        f"{len(rounds)} rounds, the order alternating; a fresh namespace per run, a fresh operator per round. "
        "Ratios: per round; below, their geometric mean with a 95% confidence interval (Student's t on the "
        "log ratios), then the spread of the per-round ratios.",
        "",
        f"- **operator / direct, p50: {r50.interval(2)}**; {r50.spread(2)}",
        f"- **operator / direct, p99: {r99.interval(2)}**; {r99.spread(2)}",
        f"- all rounds pooled: direct p50 {pooled['direct'][0]:.2f} s, p99 {pooled['direct'][1]:.2f} s; operator "
        f"p50 {pooled['operator'][0]:.2f} s, p99 {pooled['operator'][1]:.2f} s",
        f"- operator process: {statistics.fmean(cpu):.1f} CPU-seconds per {args.jobs} jobs (mean; "
        f"{min(cpu):.1f}-{max(cpu):.1f}), **{statistics.fmean(cpu) / args.jobs * 1000:.0f} ms of CPU per job**; "
        f"peak RSS {max(rss):.0f} MiB (largest of the rounds)",
        f"- **the operator's API writes per job: {statistics.fmean(per_job):.2f}** ({min(per_job):.2f}-"
        f"{max(per_job):.2f}), counted in the apiserver's audit log by its user agent: "
        + ", ".join(
            f"{what} {n / args.jobs / len(rounds):.2f}"
            for what, n in sum((r.operator.by_operator for r in rounds), Counter()).most_common()
        ),
        "- every client's writes per job, from the apiserver's own `apiserver_request_total` (the scheduler's "
        "bindings, kwok's pod status, the benchmark's own creations included): direct "
        f"{statistics.fmean(sum(r.direct.writes.values()) / args.jobs for r in rounds):.1f}, operator "
        f"{statistics.fmean(sum(r.operator.writes.values()) / args.jobs for r in rounds):.1f}",
        "",
        "| round | first | direct p50 s | direct p99 s | operator p50 s | operator p99 s | ratio p50 | ratio p99 | "
        "wall s direct / operator | operator CPU s | operator peak RSS MiB | operator writes / job | "
        "all writes / job direct / operator |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rounds, 1):
        d, o = r.direct, r.operator
        assert o.usage is not None
        lines.append(f"| {i} | {r.first} | {d.p50:.2f} | {d.p99:.2f} | {o.p50:.2f} | {o.p99:.2f} | "
                     f"{o.p50 / d.p50:.2f} | {o.p99 / d.p99:.2f} | {d.wall:.1f} / {o.wall:.1f} | "
                     f"{o.usage.cpu - o.usage.idle_cpu:.1f} | {o.usage.rss_mib:.0f} | "
                     f"{sum(o.by_operator.values()) / args.jobs:.2f} | {sum(d.writes.values()) / args.jobs:.1f} / "
                     f"{sum(o.writes.values()) / args.jobs:.1f} |")  # fmt: skip
    lines.append("")
    lines.append("Operator CPU seconds exclude its start-up (measured before the first submission).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=5.0, help="jobs submitted per second, on both sides")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="instead of a rate: submit as fast as answered, this many in flight")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (direct, operator), the order alternating")
    parser.add_argument("--cluster", default="lepton-p1", help="name of the dedicated dev cluster (deleted after)")
    args = parser.parse_args()
    # Room for one run: each job takes 2 GPUs; one node has 8. A run's namespace goes before the next run.
    nodes = math.ceil(args.jobs * 2 / GPUS_PER_NODE) + 2
    cluster = DevCluster(args.cluster)
    cluster.down()
    cluster.up(nodes=nodes, gpus_per_node=GPUS_PER_NODE)
    api = Api(cluster.kubeconfig)
    rounds: list[Round] = []
    try:
        for number in range(1, args.rounds + 1):
            order = ("direct", "operator") if number % 2 else ("operator", "direct")
            sides = {side: one_side(cluster, api, side, number, args) for side in order}
            rounds.append(Round(order[0], sides["direct"], sides["operator"]))
            r = rounds[-1]
            print(f"round {number}/{args.rounds} ({order[0]} first): p50 direct {r.direct.p50:.2f} s, operator "
                  f"{r.operator.p50:.2f} s; p99 direct {r.direct.p99:.2f} s, operator {r.operator.p99:.2f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        cluster.down()
    title = "P1 operator: TrainingJob gang start (issue 4)"
    if args.concurrency:  # the saturating closed loop of issue 13, beside the paced run
        title = f"P1 operator: TrainingJob gang start, {args.concurrency} submissions in flight (issue 13)"
    record(
        title,
        report(args, nodes, rounds),
        f"python -m benchmarks.trainingjob_gang_start --jobs {args.jobs} "
        + (f"--concurrency {args.concurrency}" if args.concurrency else f"--rate {args.rate:g}")
        + f" --rounds {args.rounds}",
    )


if __name__ == "__main__":
    main()
