"""Drift through the operator: a real server (behind its kwok pod on the loopback node) scores live
inputs against its model's dataStats; the operator reads the replica's /metrics and sets DriftDetected.

The model is the tiny GPT-2 built here, with dataStats computed by the same function the trainer calls,
over the same tickets, tokenized by the model's own tokenizer (what the trainer writes after training).
Unshifted inputs are new tickets recombined from the corpus' parts; shifted ones are longer texts in a
vocabulary the tickets never use (tests/workloads/test_drift.py measures the same on the server alone).
"""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path
from typing import Any

from lepton.api.drift import count_tokens, data_stats
from tests.cluster.kube import Kube, eventually
from tests.cluster.loopback import PLACEMENT, LoopbackRuntime, ensure_node
from tests.workloads.conftest import CORPUS
from tests.workloads.test_drift import shifted, tickets

NAME = "watched"
DRIFT = {"metric": "psi", "threshold": 0.2, "windowInputs": 200, "minInputs": 200}


def model_with_stats(out: Path) -> Path:
    from transformers import AutoTokenizer

    from lepton.workloads.trainer.tiny import make_tiny_model

    model = make_tiny_model(out, CORPUS)
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]
    ids = [tokenizer(t, truncation=True, max_length=48)["input_ids"] for t in texts]
    stats = data_stats([len(i) for i in ids], count_tokens(ids), max_length=48)
    (model / "lepton-training.json").write_text(json.dumps({"dataStats": stats.to_wire()}))
    return model


def send(ip: str, texts: list[str]) -> None:
    for i in range(0, len(texts), 25):
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [25], "data": texts[i : i + 25]}]
        body = {"inputs": inputs, "parameters": {"max_tokens": 1}}
        request = urllib.request.Request(f"http://{ip}:8080/v2/models/{NAME}/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as rsp:
            assert rsp.status == 200


def drift(kube: Kube, ns: str, reason: str) -> dict[str, Any] | None:
    st = kube.get("inferenceservice", NAME, ns).get("status") or {}
    cond = next((c for c in st.get("conditions") or [] if c["type"] == "DriftDetected"), None)
    return st if cond is not None and cond["reason"] == reason else None


def test_shifted_inputs_set_drift_detected_and_unshifted_ones_clear_it(
    kube: Kube, namespace: str, operator: Any, tmp_path: Path
) -> None:
    ns, rng = namespace, random.Random(11)
    model = model_with_stats(tmp_path / "model")
    ensure_node(kube)
    (tmp_path / "runtime").mkdir()
    with LoopbackRuntime(kube, ns, tmp_path / "runtime") as runtime:
        spec = {"model": {"uri": str(model)}, "task": "causal-lm", "protocols": ["v2"], "drift": DRIFT,
                "resources": {"requests": {"cpu": "1"}}, "scheduling": PLACEMENT,
                "runtime": {"maxBatchSize": 32, "maxInputTokens": 120, "maxOutputTokens": 1}}  # fmt: skip
        kube.apply({"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": NAME},
                    "spec": spec}, ns)  # fmt: skip
        st = eventually(lambda: drift(kube, ns, "WindowFilling"), timeout=180, interval=1,
                        what=f"the replica's window read ({runtime.errors[-2:]})")  # fmt: skip
        (pod,) = kube.get("pods", None, ns)["items"]
        ip = pod["status"]["podIP"]
        send(ip, tickets(200, rng))
        st = eventually(lambda: drift(kube, ns, "NoDrift"), timeout=60, interval=1, what="no drift on tickets")
        assert max(st["drift"]["scores"].values()) < 0.2, st["drift"]
        send(ip, shifted(200, rng))
        st = eventually(lambda: drift(kube, ns, "DriftDetected"), timeout=60, interval=1, what="drift detected")
        cond = next(c for c in st["conditions"] if c["type"] == "DriftDetected")
        assert cond["status"] == "True" and "threshold 0.2" in cond["message"], cond
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", "drift never stops serving"
        print(f"\ndrift through the operator: tickets then shifted inputs, scores {st['drift']['scores']}")
        assert not runtime.errors, runtime.errors
