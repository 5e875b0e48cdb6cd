"""Scale from zero: cold start to first answer, split into scale-up, model load and queue flush; and the
activator's added latency, in the path and out of it.

Setup: a local control plane (`leptonctl dev`, cluster lepton-zero) with the loopback node, where kwok's
pods get loopback IPs and the real server runs as a process behind each (tests/cluster/loopback.py, as in
the cluster tier); the operator and the activator run as local processes, the activator published as
Service lepton-activator with an EndpointSlice of this machine's address, as the chart publishes it. The
model is the tiny GPT-2 built from a config here (lepton.workloads.trainer.tiny), served on CPU.

Cold start, per cycle: the InferenceService (minReplicas 0, idleSeconds 10) is at zero; N requests
(POST /v1/completions, max_tokens 4, temperature 0) are sent at once to the endpoint Service NAME lists
(the activator), each answered 200 or counted as an error. The split comes from the activator's own
histograms (lepton_activator_cold_start_seconds): scale-up = from the first held request to a Running
pod with an address (the apiserver, the scheduler, kwok; a real cluster adds image pull and container
start); model load = from then to the replica's /v2/health/ready answering 200 (here: a Python process
starting, importing torch and transformers, loading and warming the model; the server's own
lepton_server_model_load_seconds is shown beside it); queue flush = first (and last) answer minus both.

Added latency, with one replica warm: sequential requests (max_tokens 1) alternate in blocks between the
replica directly (what Service NAME routes to once routing is handed back: the activator is then not in
the path at all) and through the activator (where requests go while a service is at zero or
activating), `--rounds` blocks each. Reported: p50/p99 of each and their difference.

    PYTHONPATH=. python -m benchmarks.scale_from_zero --cycles 3 --requests 50 --latency-requests 100 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node

from benchmarks.harness import operator_process
from benchmarks.results import record
from lepton.cli.devcluster import DevCluster, advertise_address
from lepton.local.backend import free_port

CLUSTER = "lepton-zero"
NAMESPACE = "bench-zero"
ACTIVATOR_NS, ACTIVATOR_SVC = "lepton-activator-bench", "lepton-activator"
NAME = "cold"
PROMPT = "The printer on floor three"


def post(url: str, host: str, body: dict[str, Any], timeout: float = 300) -> tuple[int, float]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Host": host, "Content-Type": "application/json"})  # fmt: skip
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as rsp:
            rsp.read()
            return rsp.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started
    except OSError:
        return 0, time.monotonic() - started


def metric_sums(url: str) -> dict[str, float]:
    """lepton_activator_cold_start_seconds sums and counts by phase, from the activator's /metrics."""
    with urllib.request.urlopen(url, timeout=5) as rsp:
        text = rsp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("lepton_activator_cold_start_seconds_") and "{" in line:
            name, _, value = line.rpartition(" ")
            kind = name.split("{")[0].rsplit("_", 1)[1]  # sum or count
            phase = name.split('phase="')[1].split('"')[0]
            if kind in ("sum", "count"):
                out[f"{phase}_{kind}"] = float(value)
    return out


def server_load_seconds(ip: str) -> float:
    with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as rsp:
        for line in rsp.read().decode().splitlines():
            if line.startswith("lepton_server_model_load_seconds "):
                return float(line.split()[1])
    return float("nan")


def publish_activator(kube: Kube, ip: str, port: int) -> None:
    slot = {"name": "http", "port": port, "protocol": "TCP"}
    meta = {"namespace": ACTIVATOR_NS}
    for obj in (
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ACTIVATOR_NS}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta | {"name": ACTIVATOR_SVC},
         "spec": {"ports": [slot | {"port": 80, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": meta | {"name": f"{ACTIVATOR_SVC}-local", "labels": {"kubernetes.io/service-name": ACTIVATOR_SVC}},
         "addressType": "IPv4", "ports": [slot], "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]},
    ):  # fmt: skip
        kube.run("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(obj))


def phase(kube: Kube) -> str:
    return str((kube.get("inferenceservice", NAME, NAMESPACE).get("status") or {}).get("phase"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def cold_cycle(kube: Kube, url: str, metrics: str, host: str, n: int) -> dict[str, float]:
    eventually(lambda: phase(kube) == "ScaledToZero" and not kube.get("pods", None, NAMESPACE)["items"],
               timeout=180, interval=0.5, what="at zero")  # fmt: skip
    before = metric_sums(metrics)
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    with ThreadPoolExecutor(n) as pool:
        replies = list(pool.map(lambda _: post(url, host, body), range(n)))
    after = metric_sums(metrics)
    ok = [seconds for code, seconds in replies if code == 200]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    if delta.get("scale_up_count") != 1 or delta.get("model_load_count") != 1:
        raise RuntimeError(f"expected one activation in the cycle, got {delta}")
    scale_up, load = delta["scale_up_sum"], delta["model_load_sum"]
    pods = [p for p in kube.get("pods", None, NAMESPACE)["items"] if not p["metadata"].get("deletionTimestamp")]
    own = server_load_seconds(pods[0]["status"]["podIP"]) if pods else float("nan")
    first, last = min(ok), max(ok)
    return {"errors": float(n - len(ok)), "first": first, "last": last, "scale_up": scale_up, "load": load,
            "server_load": own, "flush_first": first - scale_up - load,
            "flush_last": last - scale_up - load}  # fmt: skip


def added_latency(kube: Kube, url: str, host: str, requests: int, rounds: int) -> dict[str, list[float]]:
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    (pod,) = [p for p in kube.get("pods", None, NAMESPACE)["items"] if not p["metadata"].get("deletionTimestamp")]
    direct = f"http://{pod['status']['podIP']}:8080/v1/completions"
    out: dict[str, list[float]] = {"direct": [], "activator": []}
    for target in (direct, url):  # warm both paths
        for _ in range(10):
            post(target, host, body)
    for r in range(rounds):
        order = [("direct", direct), ("activator", url)]
        for side, target in order if r % 2 == 0 else order[::-1]:
            for _ in range(requests):
                code, seconds = post(target, host, body)
                if code == 200:
                    out[side].append(seconds)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_from_zero")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50, help="held requests per cold start")
    parser.add_argument("--latency-requests", type=int, default=100, help="requests per block, per side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks per side")
    args = parser.parse_args()
    from lepton.workloads.trainer.tiny import make_tiny_model

    ip = advertise_address()
    if ip is None:
        raise SystemExit("no non-loopback address: the apiserver refuses loopback EndpointSlice addresses")
    cluster = DevCluster(CLUSTER)
    cluster.up(nodes=1)
    kube = Kube(cluster.bins["kubectl"], cluster.kubeconfig)
    work = Path(tempfile.mkdtemp(prefix="lepton-zero-"))
    model = make_tiny_model(work / "model", Path("examples/data/tickets.jsonl"))
    ensure_node(kube)
    kube.run("create", "namespace", NAMESPACE, check=False)
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    activator = subprocess.Popen([sys.executable, "-m", "lepton.cli.main", "activator", "--host", ip, "--port",
                                  str(port)], env=env, stdout=(work / "activator.log").open("wb"),
                                 stderr=subprocess.STDOUT)  # fmt: skip
    publish_activator(kube, ip, port)
    url, metrics, host = f"http://{ip}:{port}/v1/completions", f"http://{ip}:{port}/metrics", f"{NAME}.{NAMESPACE}.svc"
    settings = {"LEPTON_ACTIVATOR_SERVICE": f"{ACTIVATOR_NS}/{ACTIVATOR_SVC}"}
    cycles: list[dict[str, float]] = []
    latency: dict[str, list[float]] = {}
    try:
        with (
            operator_process(cluster.kubeconfig, NAMESPACE, settings),
            LoopbackRuntime(kube, NAMESPACE, work) as runtime,
        ):  # fmt: skip
            svc = {"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": NAME},
                   "spec": {"model": {"uri": str(model.resolve())}, "task": "causal-lm",
                            "resources": {"requests": {"cpu": "1"}}, "scheduling": PLACEMENT,
                            "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "idleSeconds": 10}}}  # fmt: skip
            kube.run("delete", "inferenceservice", NAME, "-n", NAMESPACE, "--wait=true", check=False)
            kube.apply(svc, NAMESPACE)
            for i in range(args.cycles):
                cycles.append(cold_cycle(kube, url, metrics, host, args.requests))
                print(f"cycle {i + 1}: {cycles[-1]}", flush=True)
                if i == 0:
                    latency = added_latency(kube, url, host, args.latency_requests, args.rounds)
            if runtime.errors:
                print("loopback runtime:", runtime.errors[-3:], file=sys.stderr)
    finally:
        activator.terminate()
        activator.wait(timeout=10)
        kube.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    write(args, cycles, latency)
    return 0


def write(args: argparse.Namespace, cycles: list[dict[str, float]], latency: dict[str, list[float]]) -> None:
    def med(key: str) -> float:
        return statistics.median(c[key] for c in cycles)

    def spread(key: str) -> str:
        values = [c[key] for c in cycles]
        return f"{med(key):.2f} ({min(values):.2f}–{max(values):.2f})"

    rows = "\n".join(
        f"| {i + 1} | {c['first']:.2f} | {c['last']:.2f} | {c['scale_up']:.2f} | {c['load']:.2f} | "
        f"{c['server_load']:.2f} | {c['flush_first']:.2f} | {c['flush_last']:.2f} | {c['errors']:.0f} |"
        for i, c in enumerate(cycles)
    )
    d, a = latency.get("direct", []), latency.get("activator", [])
    lat = ""
    if d and a:
        lat = (
            "| path | requests | p50 ms | p99 ms |\n|---|---|---|---|\n"
            f"| replica directly (the Service once routing is handed back: activator not in the path) | {len(d)} | "
            f"{pct(d, 0.5) * 1000:.1f} | {pct(d, 0.99) * 1000:.1f} |\n"
            f"| through the activator (at zero and while activating) | {len(a)} | {pct(a, 0.5) * 1000:.1f} | "
            f"{pct(a, 0.99) * 1000:.1f} |\n\n"
            f"Added by the activator in the path: p50 **{(pct(a, 0.5) - pct(d, 0.5)) * 1000:+.1f} ms**, "
            f"p99 {(pct(a, 0.99) - pct(d, 0.99)) * 1000:+.1f} ms (ratio p50 {pct(a, 0.5) / pct(d, 0.5):.2f}x). "
            "Not in the path it adds nothing: Service NAME selects the replicas again and no request reaches it "
            "(goal: none; met by construction, and the direct row is that path).\n"
        )
    body = (
        f"{args.cycles} cold starts from zero, {args.requests} requests held in each; tiny GPT-2 on CPU behind a kwok "
        "pod (loopback node); seconds.\n\n"
        "| cycle | first answer | last answer | scale-up | model load | (server's own load) | flush to first | "
        "flush to last | errors |\n|---|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Median (range): first answer {spread('first')} s = scale-up {spread('scale_up')} + model load "
        f"{spread('load')} + flush {spread('flush_first')}; last of {args.requests} answers {spread('last')} s. "
        "Model load here is a Python process starting and importing torch on 2 shared cores; scale-up is the "
        "control plane only (no image pull, no container start).\n\n"
        f"Activator's added latency: {args.rounds} alternating blocks of {args.latency_requests} sequential "
        "requests per side (max_tokens 1), one replica warm.\n\n" + lat
    )
    command = (f"PYTHONPATH=. python -m benchmarks.scale_from_zero --cycles {args.cycles} --requests {args.requests} "
               f"--latency-requests {args.latency_requests} --rounds {args.rounds}")  # fmt: skip
    record("Scale from zero: cold start and the activator's added latency", body, command)


if __name__ == "__main__":
    raise SystemExit(main())
