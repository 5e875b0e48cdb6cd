"""Serve an InferenceService on this machine: the server the operator's Deployment runs, as a local
process on 127.0.0.1, until Ctrl-C.

The manifest is validated by the same models and rendered by the same `render`; the container's
command and its $LEPTON_SERVER_CONFIG run as they are, with only what one machine without a cluster
cannot have translated: the port (8080 when free), the device (the GPU when there is one, else the
CPU), and a model that comes from a TrainingJob (its output in the latest local run of that job).
One replica per role: a canary with a local model runs as a second server on a port of its own
(locally nothing splits traffic between them).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lepton.api.common import ModelSource
from lepton.api.contract import SERVER_CONFIG_ENV, SERVER_PORT
from lepton.api.kinds import InferenceService
from lepton.local.backend import LocalBackend, LocalProcess, LocalRunError, free_port
from lepton.local.results import upstream_model
from lepton.render.inferenceservice import ServeResolved, ServeSettings, render
from lepton.status.references import lineage_of


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class InferenceServiceBackend(LocalBackend[InferenceService]):
    kind = "InferenceService"
    serves = True

    def __init__(self, svc: InferenceService, runs_root: Path = Path(".lepton/runs")) -> None:
        if svc.spec.suspend:
            raise LocalRunError("spec.suspend is true: a suspended InferenceService serves nothing")
        for role, source in (("model", svc.spec.model), ("canary.model", svc.spec.canary.model if svc.spec.canary
                                                                          else None)):  # fmt: skip
            if source is not None and source.pvc is not None:
                raise LocalRunError(f"locally, {role} cannot come from a PVC: use uri (a local directory), a "
                                    "hub id, or a TrainingJob or TuningStudy run locally")  # fmt: skip
        if svc.spec.logging is not None and svc.spec.logging.destination.pvc is not None:
            raise LocalRunError("locally, logging.destination cannot be a PVC: use uri (a local directory)")
        meta = {"uid": svc.metadata.uid or "local", "namespace": svc.metadata.namespace or "default"}
        super().__init__(svc.model_copy(update={"metadata": svc.metadata.model_copy(update=meta)}), runs_root)
        self.urls: list[str] = []
        self.sources: list[str] = []  # models that came from a TrainingJob's local run

    def _resolve(self, source: ModelSource | None, runs_root: Path) -> str | None:
        return upstream_model(runs_root, source)[0] if source is not None else None

    def processes(self, run_dir: Path) -> list[LocalProcess]:
        spec = self.resource.spec
        model_uri, found = upstream_model(run_dir.parent, spec.model)
        resolved = ServeResolved(
            model_uri=model_uri,
            canary_uri=self._resolve(spec.canary.model if spec.canary else None, run_dir.parent),
            lineage=lineage_of(self.resource, found, model_uri, None),
        )
        self.sources = [f"{role} {uri}" for role, uri in (("model from", resolved.model_uri),
                                                            ("canary from", resolved.canary_uri)) if uri]  # fmt: skip
        rendered = render(self.resource, ServeSettings(), resolved)
        out, self.urls = [], []
        for deployment in (c for c in rendered.children if c["kind"] == "Deployment"):
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
            port = SERVER_PORT if not self.urls and _port_free(SERVER_PORT) else free_port()
            config = json.loads(env[SERVER_CONFIG_ENV]) | {"port": port, "host": "127.0.0.1", "device": "auto"}
            env[SERVER_CONFIG_ENV] = json.dumps(config)
            env.pop("HOME", None)  # the pod's read-only-root layout; locally the user's own
            env["HF_HOME"] = str(run_dir / "cache" / "hf")
            argv = [sys.executable, *container["command"][1:]]  # the image's python: this one
            name = deployment["metadata"]["name"]
            out.append(LocalProcess(name, argv, env, run_dir / f"{name}.log", ready_url=f"http://127.0.0.1:{port}"))
            self.urls.append(f"http://127.0.0.1:{port}")
        return out

    def starting(self, processes: list[LocalProcess]) -> str:
        spec = self.resource.spec
        notes = []
        if spec.replicas not in (None, 1) or spec.autoscaling is not None:
            notes.append("one replica locally")
        if spec.canary is not None:
            notes.append(f"the canary on {self.urls[-1]} (locally nothing splits traffic)")
        notes += self.sources
        extra = f" ({'; '.join(notes)})" if notes else ""
        return f"starting the server for {self.resource.metadata.name!r}{extra}; loading the model…"

    def _sample(self) -> tuple[str, dict[str, Any]]:
        """The route and body of a request this service answers (its task and protocols)."""
        spec, name = self.resource.spec, self.resource.metadata.name
        if spec.task == "causal-lm" and "openai" in spec.protocols:
            return "v1/completions", {"model": name, "prompt": "hello", "max_tokens": 16}
        return f"v2/models/{name}/infer", {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]
        }

    def probe(self, processes: list[LocalProcess]) -> str:
        base, name = processes[0].ready_url, self.resource.metadata.name
        route, body = self._sample()
        started = time.monotonic()
        answer = _post(f"{base}/{route}", body)
        took = time.monotonic() - started
        if "choices" in answer:
            said = str((answer["choices"] or [{}])[0].get("text", ""))
        else:
            said = json.dumps((answer.get("outputs") or [{}])[0].get("data"))[:120]
        meta = _get(f"{base}/v2/models/{name}").get("metadata") or {}
        lineage = ", ".join(f"{k}={meta[k]}" for k in LINEAGE_KEYS if k in meta)
        return (f"asked POST /{route} {json.dumps(body)}: answered in {took:.2f}s: {said!r}\n"
                f"model {name!r} metadata: {lineage or 'no lineage recorded'}")  # fmt: skip

    def serving(self, processes: list[LocalProcess]) -> str:
        base = processes[0].ready_url
        route, body = self._sample()
        return (
            f"serving {self.resource.metadata.name!r} on {base} (Ctrl-C to stop). Try:\n  curl -s {base}/{route} "
            f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
        )

    def succeeded(self, run_dir: Path) -> str:
        return f"stopped serving; logs in {run_dir}"

    def interrupted(self) -> str:
        return "stopped serving"


LINEAGE_KEYS = ("dataset", "datasetVersion", "tuningStudy", "trial", "trainingJob", "baseModel")


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    return _answer(request)


def _get(url: str) -> dict[str, Any]:
    return _answer(urllib.request.Request(url))


def _answer(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=60) as rsp:
            answer = json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        why = " ".join(exc.read().decode(errors="replace").split())[:300]
        raise LocalRunError(f"{request.get_method()} {request.full_url} answered {exc.code}: {why}") from None
    except (OSError, ValueError) as exc:
        raise LocalRunError(f"{request.get_method()} {request.full_url} failed: {exc}") from None
    if not isinstance(answer, dict):
        raise LocalRunError(
            f"{request.get_method()} {request.full_url} answered {type(answer).__name__}, not an object"
        )
    return answer
