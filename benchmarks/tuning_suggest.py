"""P4: how long the tuner takes to suggest a trial when its study already holds about 1,000 trials.

For each sampler a journal is filled with `history` finished trials (parameters drawn from a seeded RNG,
values from an analytic objective), then a real tuner process (`python -m lepton.workloads.tuner`)
opens it and is driven the way the operator drives it: `asks` syncs one after the other, each telling
the previous trial's result and asking one more. Two times per ask: the tuner's own (its log line
"asked [n] in X s", what lepton_tuner_suggest_seconds observes) and the whole sync round trip as the
caller (the operator's event loop, awaiting one HTTP answer) sees it.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STUDY, UID = "bench/suggest", "5e1ec7ed-0000-4000-8000-000000000004"
SPACE = [
    {"name": "learningRate", "type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    {"name": "warmupSteps", "type": "int", "low": 0, "high": 20, "step": 5},
    {"name": "weightDecay", "type": "float", "low": 0.0, "high": 0.1},
]
ASKED = re.compile(r"asked \[(\d+)\] in ([\d.]+)s")
SERVING = re.compile(r"serving on http://([\d.]+):(\d+)")


def objective(p: dict[str, Any]) -> float:
    """A smooth bowl with its minimum inside the space (noise-free: the samplers' cost is what is timed)."""
    lr, warmup, decay = float(p["learningRate"]), float(p["warmupSteps"]), float(p["weightDecay"])
    return (math.log10(lr) + 2.3) ** 2 + ((warmup - 10) / 10) ** 2 + (decay - 0.03) ** 2


@dataclass
class Latency:
    sampler: str
    history: int
    asks: list[float]  # the tuner's own time per ask, seconds
    syncs: list[float]  # the caller's round trip per sync (tell one, ask one), seconds

    def row(self) -> str:
        """The first ask apart (a fresh tuner: GP imports torch, CMA-ES rebuilds its state from the history)."""
        a, s = self.asks[1:] or self.asks, self.syncs[1:] or self.syncs
        return (f"| {self.sampler} | {self.history} | {self.asks[0] * 1000:.0f} | {len(a)} | "
                f"{statistics.median(a) * 1000:.0f} | {statistics.fmean(a) * 1000:.0f} | {max(a) * 1000:.0f} | "
                f"{statistics.median(s) * 1000:.0f} | {max(s) * 1000:.0f} |")  # fmt: skip


def fill(journal_dir: Path, history: int, seed: int) -> None:
    """`history` COMPLETE trials in the study the tuner will open (its name, its directions)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import create_trial

    from lepton.api.tuner import JOURNAL_FILE, optuna_study_name
    from lepton.api.tuningstudy import Parameter
    from lepton.workloads.tuner import space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = space.distributions([Parameter.model_validate(p) for p in SPACE])
    journal_dir.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(journal_dir / JOURNAL_FILE)))
    study = optuna.create_study(storage=storage, study_name=optuna_study_name(STUDY, UID), direction="minimize")
    rng = random.Random(seed)
    trials = []
    for _ in range(history):
        params = {"learningRate": 10 ** rng.uniform(-4, math.log10(3e-2)),
                  "warmupSteps": rng.choice([0, 5, 10, 15, 20]), "weightDecay": rng.uniform(0.0, 0.1)}  # fmt: skip
        trials.append(create_trial(params=params, distributions=dists, value=objective(params)))
    study.add_trials(trials)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=600) as rsp:
        reply: dict[str, Any] = json.loads(rsp.read())
        return reply


def measure(sampler: str, history: int, asks: int, seed: int = 1) -> Latency:
    with tempfile.TemporaryDirectory(prefix=f"p4-suggest-{sampler}-") as tmp:
        work = Path(tmp)
        fill(work / "study", history, seed)
        config = {"study": STUDY, "uid": UID, "storage": "journal", "journalDir": str(work / "study"),
                  "objectives": [{"metric": "eval_loss", "direction": "minimize"}], "searchSpace": SPACE,
                  "sampler": {"type": sampler, "seed": seed}, "pruner": {"type": "none"}, "host": "127.0.0.1",
                  "port": 0, "dashboard": False}  # fmt: skip
        env = {**os.environ, "LEPTON_TUNER_CONFIG": json.dumps(config), "PYTHONPATH": str(ROOT / "operator")}
        log = work / "tuner.log"
        proc = subprocess.Popen([sys.executable, "-m", "lepton.workloads.tuner"], env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (found := SERVING.search(log.read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the tuner did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.05)
            url = f"http://{found.group(1)}:{found.group(2)}/v1/sync"
            syncs: list[float] = []
            results: list[dict[str, Any]] = []
            for _ in range(asks):
                started = time.perf_counter()
                reply = post(url, {"study": STUDY, "uid": UID, "parallelism": 1, "maxTrials": history + asks,
                                   "results": results})  # fmt: skip
                syncs.append(time.perf_counter() - started)
                (trial,) = [t for t in reply["trials"] if t["state"] == "running"]
                results = [{"number": trial["number"], "state": "complete", "values": [objective(trial["parameters"])]}]
            post(url, {"study": STUDY, "uid": UID, "parallelism": 0, "maxTrials": history + asks, "results": results})
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        own = [float(m.group(2)) for m in ASKED.finditer(log.read_text())]
    if len(own) != asks:
        raise SystemExit(f"{sampler}: {len(own)} asks logged for {asks} syncs")
    return Latency(sampler, history, own, syncs)


HEADER = [
    "| sampler | trials in the study | first ask ms | asks after it | ask p50 ms | ask mean ms | ask max ms | "
    "sync p50 ms | sync max ms |",
    "|---|---|---|---|---|---|---|---|---|",
]
