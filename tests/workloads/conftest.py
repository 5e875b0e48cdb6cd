"""The workloads tier: real torchrun processes (gloo, CPU) on a tiny model built here."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, ROOT

CORPUS = EXAMPLES / "data" / "tickets.jsonl"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lepton.workloads.trainer.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", CORPUS)


def trainer_config(model: Path, run_dir: Path, **hyper: Any) -> dict[str, Any]:
    hp = {"learningRate": 0.003, "batchSize": 4, "maxSteps": 40, "warmupSteps": 2, "maxSeqLength": 48,
          "seed": 1, "lrScheduler": "linear"} | hyper  # fmt: skip
    return {
        "job": "test/tiny",
        "task": "causal-lm",
        "modelPath": str(model),
        "data": {"path": str(CORPUS), "validationFraction": 0.1},
        "hyperparameters": hp,
        "backend": "gloo",
        "checkpointDir": str(run_dir / "ckpt"),
        "checkpointEverySteps": 5,
        "outputDir": str(run_dir / "out"),
        "metricsPort": 0,
    }


def launch(
    torchrun_args: list[str], config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real torchrun agent running the trainer with `config`, in a session of its own, logging to `log`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args,
           "-m", "lepton.workloads.trainer", "--config", str(config)]  # fmt: skip
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=environ, start_new_session=True)


def torchrun(config: dict[str, Any], run_dir: Path, procs: int = 2) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    path.write_text(json.dumps(config))
    args = ["--nnodes=1", f"--nproc-per-node={procs}", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0",
            "--max-restarts=0"]  # fmt: skip
    return launch(args, path, run_dir / "torchrun.log")


def finish(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float = 300, log: str = "torchrun.log") -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        lose_node(proc)
        raise AssertionError((run_dir / log).read_text()[-4000:]) from None


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def lose_node(proc: subprocess.Popen[bytes]) -> None:
    """What losing a node does to a pod: every process of it dies at once, nothing is told."""
    for pid in tree(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "out" / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- data sources: a real HTTP file server and a real S3-compatible store (SeaweedFS) ------------
@dataclass
class FileServer:
    """http.server in a thread serving `root`; with `auth` set, a request without that exact
    Authorization header gets 401."""

    root: Path
    base: str
    auth: str | None = None

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    state = FileServer(root, "")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if state.auth is not None and self.headers.get("Authorization") != state.auth:
                self.send_error(401, "Unauthorized")
                return
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def weed_binary() -> Path | None:
    """SeaweedFS's `weed` as hack/build-binaries.sh builds it (LEPTON_BIN_WEED, else its cache path)."""
    if os.environ.get("LEPTON_BIN_WEED"):
        return Path(os.environ["LEPTON_BIN_WEED"])
    versions = dict(
        line.split("=", 1) for line in (ROOT / "hack" / "versions.env").read_text().splitlines() if "=" in line
    )
    cache = Path(os.environ.get("LEPTON_CACHE") or Path.home() / ".cache" / "lepton")
    path = cache / "bin" / f"weed-{versions['SEAWEEDFS_VERSION']}" / "weed"
    return path if path.exists() else None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class S3Store:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def client(self, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))  # fmt: skip


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    """A real SeaweedFS server (master, volume, filer, S3 gateway) on loopback ports, one access key
    pair, one bucket `data`, its data in a temporary directory; stopped at the end of the session."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS's weed is not built: run hack/build-binaries.sh")
    work = tmp_path_factory.mktemp("seaweedfs")
    store = S3Store("", "AKLEPTONTEST0000", "lepton-test-secret-7f3c9a", "data")
    keys = [{"accessKey": store.access_key, "secretKey": store.secret_key}]
    identities = {
        "identities": [{"name": "lepton", "actions": ["Admin", "Read", "Write", "List"], "credentials": keys}]
    }
    (work / "s3.json").write_text(json.dumps(identities))
    (work / "data").mkdir()
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    cmd = [str(weed), "server", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-master.port.grpc={master_g}", "-master.volumeSizeLimitMB=64",
           f"-volume.port={volume}", f"-volume.port.grpc={volume_g}", "-volume.max=100",
           "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}", f"-filer.localSocket={work / 'f.sock'}",
           "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={work / 's3.json'}",
           f"-s3.localSocket={work / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-metricsPort=0"]  # fmt: skip
    log = work / "weed.log"
    proc = subprocess.Popen(cmd, cwd=work, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    store = S3Store(f"http://127.0.0.1:{s3}", store.access_key, store.secret_key, store.bucket)
    try:
        client, deadline = store.client(), time.monotonic() + 60
        while True:  # the gateway answers before the filer, volume and lock ring are ready: write until it works
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=store.bucket)
                client.put_object(Bucket=store.bucket, Key=".ready", Body=b"")
                client.delete_object(Bucket=store.bucket, Key=".ready")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"SeaweedFS did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield store
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for port in (master_g, volume_g, filer_g, s3_g):  # weed puts its gRPC unix sockets there, named by port
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)
