"""Scale to zero and back, on the real control plane with a real server and a real activator.

kwok runs no container, so the server runs as a local process behind its kwok pod (the loopback node:
pod IPs on 127.77.0.0/24), and the activator as a local process, published the way the chart publishes
it: Service `lepton-activator` with an EndpointSlice of its address (the machine's own: the apiserver
refuses loopback addresses in EndpointSlices). What is real: the operator's idle decision from the
server's own metrics, the Service losing its selector and our EndpointSlice pointing at the activator,
the activator scaling the Deployment through its scale subresource, kwok making the pod, the server
loading its model, the held requests forwarded, and routing handed back. What a cluster adds and this
cannot: kube-proxy turning the Service's ClusterIP into those endpoints, so the test sends requests to
the endpoint the Service lists (with the Host header a client of NAME.NAMESPACE.svc sends), as
kube-proxy would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lepton.cli.devcluster import DevCluster, advertise_address
from lepton.local.backend import free_port
from tests.cluster.conftest import ACTIVATOR_NAMESPACE, ACTIVATOR_SERVICE
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node
from tests.conftest import EXAMPLES

# Not loopback: the apiserver refuses loopback addresses in EndpointSlices. The machine's own address,
# the one the apiserver advertises.
ACTIVATOR_IP = advertise_address() or ""
ACTIVATOR_PORT = free_port()
NAME = "zero"
PROMPT = "The printer on floor three"


@pytest.fixture(scope="module")
def activator(dev_cluster: DevCluster, kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The activator as a local process, and its Service and EndpointSlice as the chart would make them."""
    log = tmp_path_factory.mktemp("activator") / "activator.log"
    env = {**os.environ, "KUBECONFIG": str(dev_cluster.kubeconfig)}
    argv = [sys.executable, "-m", "lepton.cli.main", "activator", "--host", ACTIVATOR_IP, "--port", str(ACTIVATOR_PORT)]
    proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    port = {"name": "http", "port": ACTIVATOR_PORT, "protocol": "TCP"}
    meta = {"namespace": ACTIVATOR_NAMESPACE}
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ACTIVATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta | {"name": ACTIVATOR_SERVICE},
         "spec": {"ports": [port | {"port": 80, "targetPort": ACTIVATOR_PORT}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": meta | {"name": f"{ACTIVATOR_SERVICE}-local",
                             "labels": {"kubernetes.io/service-name": ACTIVATOR_SERVICE}},
         "addressType": "IPv4", "ports": [port],
         "endpoints": [{"addresses": [ACTIVATOR_IP], "conditions": {"ready": True}}]},
    ]  # fmt: skip
    for obj in objects:
        kube.run("apply", "--server-side", "-f", "-", stdin=json.dumps(obj))
    eventually(lambda: _get(f"http://{ACTIVATOR_IP}:{ACTIVATOR_PORT}/healthz")[0] == 200, timeout=30,
               what=f"the activator listening ({log})")  # fmt: skip
    yield f"http://{ACTIVATOR_IP}:{ACTIVATOR_PORT}"
    proc.terminate()
    proc.wait(timeout=10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def post(url: str, host: str, body: dict[str, Any], timeout: float = 180) -> tuple[int, dict[str, str], Any, float]:
    """(status, headers, JSON body, seconds) of one POST with the Host a client of the Service sends."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Host": host, "Content-Type": "application/json"})  # fmt: skip
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as rsp:
            return rsp.status, dict(rsp.headers), json.loads(rsp.read()), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}"), time.monotonic() - started


def inference_service(model: Path, **autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": str(model)},
            "task": "causal-lm",
            "resources": {"requests": {"cpu": "1"}},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "idleSeconds": 10} | autoscaling,
            "runtime": {"maxBatchSize": 16, "maxOutputTokens": 8},
            "scheduling": PLACEMENT,
        },
    }


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def at_zero(kube: Kube, ns: str) -> dict[str, Any] | None:
    st = kube.get("inferenceservice", NAME, ns).get("status") or {}
    return st if st.get("phase") == "ScaledToZero" else None


def serving(kube: Kube, ns: str) -> dict[str, Any] | None:
    st = kube.get("inferenceservice", NAME, ns).get("status") or {}
    ok = st.get("phase") == "Running" and condition(st, "Ready").get("status") == "True"
    return st if ok and kube.get("service", NAME, ns)["spec"].get("selector") else None


def activator_slices(kube: Kube, ns: str) -> list[dict[str, Any]]:
    ours = "endpointslice.kubernetes.io/managed-by=activator.lepton.ai"
    out = kube.run("get", "endpointslices", "-n", ns, "-l", ours, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def waiter(kube: Kube, ns: str, logs: Path, runtime: LoopbackRuntime, operator: Any) -> Callable[..., Any]:
    def wait(fn: Callable[[], dict[str, Any] | None], timeout: float, what: str) -> dict[str, Any]:
        """`eventually`, and on a timeout what the status, the pods, their logs and the operator said."""
        try:
            return eventually(fn, timeout=timeout, interval=1, what=what)
        except AssertionError as exc:
            st = kube.get("inferenceservice", NAME, ns).get("status")
            pods = [(p["metadata"]["name"], p["status"].get("phase")) for p in kube.get("pods", None, ns)["items"]]
            tails = {p.name: p.read_text()[-1500:] for p in logs.glob("*.log")}
            raise AssertionError(
                f"{exc}\n{json.dumps(st, indent=1)}\n{pods}\n{tails}\n{runtime.errors[-3:]}\n"
                f"{operator.log.read_text()[-3000:]}"
            ) from None

    return wait


def check_at_zero(kube: Kube, ns: str, st: dict[str, Any]) -> dict[str, Any]:
    """Status, printer column, Deployment, Service and our EndpointSlice of a service at zero; the slice."""
    zero = condition(st, "ScaledToZero")
    assert zero["status"] == "True" and zero["reason"] == "Idle", zero
    assert condition(st, "Ready")["status"] == "True", "at zero it still answers: kstatus reads Current"
    assert kube.get("deployment", f"{NAME}-primary", ns)["spec"]["replicas"] == 0
    assert "selector" not in kube.get("service", NAME, ns)["spec"], "no selector: the endpoints are ours"
    (ours,) = activator_slices(kube, ns)
    assert ours["metadata"]["labels"]["kubernetes.io/service-name"] == NAME
    assert [e["addresses"] for e in ours["endpoints"]] == [[ACTIVATOR_IP]]
    assert ours["ports"] == [{"name": "http", "port": ACTIVATOR_PORT, "protocol": "TCP", "appProtocol": "http"}]
    row = kube.run("get", "inferenceservice", NAME, "-n", ns).stdout
    assert "ScaledToZero" in row, row
    eventually(lambda: not kube.get("pods", None, ns).get("items"), timeout=60, what="the replica gone")
    return ours


def test_idle_to_zero_then_fifty_held_requests_all_answered_and_routing_handed_back(
    kube: Kube, namespace: str, operator: Any, activator: str, tmp_path: Path
) -> None:
    from lepton.workloads.trainer.tiny import make_tiny_model

    ns, host = namespace, f"{NAME}.{namespace}.svc"
    model = make_tiny_model(tmp_path / "model", EXAMPLES / "data" / "tickets.jsonl")
    ensure_node(kube)
    (tmp_path / "runtime").mkdir()
    with LoopbackRuntime(kube, ns, tmp_path / "runtime") as runtime:
        kube.apply(inference_service(model), ns)
        # It starts with one replica (its model is known to load), then idles to zero.

        wait = waiter(kube, ns, tmp_path / "runtime", runtime, operator)
        wait(lambda: serving(kube, ns), 180, "serving with its first replica")
        ours = check_at_zero(kube, ns, wait(lambda: at_zero(kube, ns), 90, "scaled to zero after 10s idle"))

        # 50 concurrent requests at zero, sent where the Service's endpoints point (kube-proxy's job).
        (address,) = ours["endpoints"][0]["addresses"]
        url = f"http://{address}:{ours['ports'][0]['port']}/v1/completions"
        body = {"model": NAME, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
        sent = time.monotonic()
        with ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(lambda _: post(url, host, body), range(50)))
        codes = [r[0] for r in replies]
        assert codes == [200] * 50, [(r[0], r[2]) for r in replies if r[0] != 200][:3]
        texts = {r[2]["choices"][0]["text"] for r in replies}
        assert len(texts) == 1, texts
        first = min(r[3] for r in replies)
        print(f"\nscale from zero: 50 held requests answered; first answer {first:.1f}s after sending, "
              f"last {max(r[3] for r in replies):.1f}s ({time.monotonic() - sent:.1f}s in all)")  # fmt: skip
        assert all("X-Lepton-Activator-Seconds" in r[1] for r in replies), "each went through the activator"

        # The answer is the model's: the same request straight to the replica, once routing is handed back.
        st = wait(lambda: serving(kube, ns), 90, "routing handed back")
        assert condition(st, "ScaledToZero")["status"] == "False"
        eventually(lambda: not activator_slices(kube, ns), timeout=30, what="our EndpointSlice pruned")
        (pod,) = [p for p in kube.get("pods", None, ns)["items"] if not p["metadata"].get("deletionTimestamp")]
        direct = post(f"http://{pod['status']['podIP']}:8080/v1/completions", host, body)
        assert direct[0] == 200 and {direct[2]["choices"][0]["text"]} == texts

        # A deadline shorter than the load: 503 with Retry-After, and nothing else lost.
        kube.patch("inferenceservice", NAME, ns, {"spec": {"autoscaling": {"activationTimeoutSeconds": 1}}})
        wait(lambda: at_zero(kube, ns), 90, "at zero again")
        # What never wakes it: a probe or a scrape through the Service, answered by the activator itself;
        # a host that names no service at zero gets 404 with the words to fix it.
        base = url.rsplit("/v1/", 1)[0]
        for path in ("/metrics", "/v2/health/ready"):
            request = urllib.request.Request(base + path, headers={"Host": host})
            with urllib.request.urlopen(request, timeout=10) as rsp:
                assert rsp.status == 200
        code, _, doc, _ = post(url, f"nosuch.{ns}.svc", body)
        assert code == 404 and "autoscaling.minReplicas 0" in doc["error"], doc
        assert kube.get("deployment", f"{NAME}-primary", ns)["spec"]["replicas"] == 0, "nothing woke it"
        code, headers, doc, seconds = post(url, host, body)
        assert code == 503 and int(headers["Retry-After"]) >= 1, (code, headers, doc)
        assert "activationTimeoutSeconds" in doc["error"] and seconds < 10, doc
        assert not runtime.errors, runtime.errors
