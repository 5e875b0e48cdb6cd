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
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import yaml

from benchmarks.results import record
from lepton.api import GROUP, VERSION
from lepton.cli.devcluster import DevCluster

ROOT = Path(__file__).resolve().parent.parent
# Datasets: their status comes from the operator's generic reconcile (no children yet), so this
# measures the watch -> handler -> status-patch path itself. TrainingJobs, which create pods, are P1.
TEMPLATE = yaml.safe_load((ROOT / "examples" / "dataset.yaml").read_text())
PLURAL = "datasets"


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


def path(ns: str, name: str = "", sub: str = "") -> str:
    out = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


async def run_once(api: Api, ns: str, count: int, concurrency: int, self_patch: bool) -> list[float]:
    created: dict[str, float] = {}
    observed: dict[str, float] = {}
    done = asyncio.Event()
    async with api.session() as http:
        async with http.get(path(ns)) as rsp:
            rv = (await rsp.json())["metadata"]["resourceVersion"]

        async def watch() -> None:
            nonlocal rv
            while True:  # the server may end a watch: resume from the last version seen
                params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
                async with http.get(path(ns), params=params) as rsp:
                    async for line in rsp.content:
                        obj = json.loads(line)["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        name = obj["metadata"].get("name")
                        if name and name not in observed and obj.get("status", {}).get("observedGeneration") == 1:
                            observed[name] = time.perf_counter()
                            if len(observed) == count:
                                done.set()
                                return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        gate = asyncio.Semaphore(concurrency)

        async def create(i: int) -> None:
            body = copy.deepcopy(TEMPLATE)
            body["metadata"] = {"name": f"data-{i:04d}"}
            async with gate:
                created[body["metadata"]["name"]] = time.perf_counter()
                async with http.post(path(ns), json=body) as rsp:
                    assert rsp.status == 201, await rsp.text()
                if self_patch:
                    patch = {"status": {"observedGeneration": 1, "phase": "Pending"}}
                    url = path(ns, body["metadata"]["name"], "status")
                    headers = {"Content-Type": "application/merge-patch+json"}
                    async with http.patch(url, data=json.dumps(patch), headers=headers) as rsp:
                        assert rsp.status == 200, await rsp.text()

        await asyncio.gather(*(create(i) for i in range(count)))
        try:
            await asyncio.wait_for(done.wait(), timeout=300)
        except TimeoutError:
            raise SystemExit(f"only {len(observed)}/{count} resources got a status within 300 s") from None
        finally:
            watcher.cancel()
    return sorted(observed[n] - created[n] for n in created)


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": q[49] * 1000,
        "p99": q[98] * 1000,
        "max": samples[-1] * 1000,
        "mean": statistics.mean(samples) * 1000,
    }


def table(b: dict[str, float], m: dict[str, float], base_wall: float, op_wall: float) -> str:
    def row(label: str, r: dict[str, float], wall: float) -> str:
        return f"| {label} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | {r['mean']:.1f} | {wall:.1f} |"

    ratio = (
        f"| ratio operator / baseline | {m['p50'] / b['p50']:.2f}x | {m['p99'] / b['p99']:.2f}x | "
        f"| {m['mean'] / b['mean']:.2f}x | {op_wall / base_wall:.2f}x |"
    )
    return "\n".join(
        [
            "| run | p50 ms | p99 ms | max ms | mean ms | wall s |",
            "|---|---|---|---|---|---|",
            row("baseline: the benchmark patches status itself (no operator)", b, base_wall),
            row("operator: `leptonctl operator` writes status", m, op_wall),
            ratio,
        ]
    )


def namespace(cluster: DevCluster, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    return ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    cluster = DevCluster(os.environ.get("LEPTON_TEST_CLUSTER", "lepton"))
    cluster.up()
    api = Api(cluster.kubeconfig)

    base_ns = namespace(cluster, "bench-baseline")
    t0 = time.perf_counter()
    baseline = asyncio.run(run_once(api, base_ns, args.count, args.concurrency, self_patch=True))
    base_wall = time.perf_counter() - t0

    op_ns = namespace(cluster, "bench-operator")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LEPTON_WATCH_NAMESPACES": op_ns,
           "LEPTON_METRICS_PORT": "0", "LEPTON_LOG_LEVEL": "WARNING"}  # fmt: skip
    op = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", "operator"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(3)  # let kopf list and start watching
    idle_cpu, _ = proc_stats(op.pid)
    t0 = time.perf_counter()
    measured = asyncio.run(run_once(api, op_ns, args.count, args.concurrency, self_patch=False))
    op_wall = time.perf_counter() - t0
    cpu, rss = proc_stats(op.pid)
    op.terminate()
    op.wait(timeout=30)
    for ns in (base_ns, op_ns):
        cluster.kubectl("delete", "namespace", ns, "--wait=false")

    b, m = summary(baseline), summary(measured)
    versions = cluster.component_versions()
    body = f"""
{args.count} Datasets created at concurrency {args.concurrency} against the real local control plane
({versions["kube-apiserver"]}, etcd {versions["etcd"].split()[-1]}, kwok). Latency = POST sent → watch event
carrying `status.observedGeneration: 1`.

{table(b, m, base_wall, op_wall)}

Operator process: {cpu - idle_cpu:.1f} CPU-seconds for the {args.count} resources ({cpu:.1f} s including start-up),
peak RSS {rss:.0f} MiB. It drains {args.count / op_wall:.0f} resources/s; the latency is mostly queueing
behind the burst on 2 cores shared with the apiserver and etcd, and kopf spends two PATCHes per object
(its diff-base annotation, then the status) where the baseline spends one.
"""
    record(
        "Operator: create → first status (issue 3)",
        body,
        f"python -m benchmarks.operator_status_latency --count {args.count} --concurrency {args.concurrency}",
    )


if __name__ == "__main__":
    main()
