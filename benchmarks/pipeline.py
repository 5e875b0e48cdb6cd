"""The whole pipeline on this machine (issue 11): `leptonctl run -f examples/pipeline/`, cold, against the
same four manifests run one at a time, as a user ran them before a folder ran in one command.

Every run starts in a fresh directory holding a copy of examples/ and nothing else, so the Dataset is
prepared, the study's 4 trials are trained (torchrun on CPU, 2 at a time), the final job is trained
and the server is started and asked one completion. The baseline runs `leptonctl run -f` of the
Dataset, the study and the job, then starts the service, sends the same request once it is ready and
stops it (SIGTERM, as Ctrl-C). Rounds alternate which side goes first. Then the folder once more in
the last pipeline directory (warm: nothing recomputed, the server started and asked again).

    python -m benchmarks.pipeline [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.results import record
from benchmarks.stats import estimate, ratio_estimate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}  # fmt: skip
LEPTONCTL = [sys.executable, "-m", "lepton.cli.main"]
STEPS = ("Dataset", "TuningStudy", "TrainingJob", "InferenceService")
SUMMARY = re.compile(r"^  (\w+) \S+\s+ok\s+([\d.]+)s", re.MULTILINE)


def fresh(parent: Path, name: str) -> Path:
    where = parent / name
    for part in ("pipeline", "data", "models"):
        shutil.copytree(EXAMPLES / part, where / "examples" / part)
    return where


def run_folder(where: Path) -> tuple[float, dict[str, float]]:
    started = time.monotonic()
    proc = subprocess.run([*LEPTONCTL, "run", "-f", "examples/pipeline/"], cwd=where, env=ENV, capture_output=True,
                          text=True, timeout=1800, check=False)  # fmt: skip
    took = time.monotonic() - started
    if proc.returncode != 0 or "== pipeline succeeded" not in proc.stderr:
        raise SystemExit(f"the pipeline failed in {where}:\n{proc.stderr[-3000:]}")
    return took, {kind: float(seconds) for kind, seconds in SUMMARY.findall(proc.stderr)}


def run_one_by_one(where: Path) -> tuple[float, dict[str, float]]:
    steps: dict[str, float] = {}
    started = time.monotonic()
    for kind, file in zip(STEPS[:3], ("dataset", "tuningstudy", "trainingjob"), strict=True):
        began = time.monotonic()
        proc = subprocess.run([*LEPTONCTL, "run", "-f", f"examples/pipeline/{file}.yaml"], cwd=where, env=ENV,
                              capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{file} failed in {where}:\n{proc.stderr[-3000:]}")
        steps[kind] = time.monotonic() - began
    began = time.monotonic()
    server = subprocess.Popen([*LEPTONCTL, "run", "-f", "examples/pipeline/inferenceservice.yaml"], cwd=where, env=ENV,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if line.startswith("serving 'pipeline-chat' on "):
                base = line.split(" on ")[1].split()[0]
                break
        else:
            raise SystemExit(f"the server did not start in {where}")
        body = json.dumps({"model": "pipeline-chat", "prompt": "hello", "max_tokens": 16}).encode()
        request = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as rsp:
            json.loads(rsp.read())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    steps["InferenceService"] = time.monotonic() - began
    return time.monotonic() - started, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder: list[tuple[float, dict[str, float]]] = []
    separate: list[tuple[float, dict[str, float]]] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="lepton-pipeline-") as tmp:
        last = Path(tmp)
        for r in range(args.rounds):
            order = ("folder", "separate") if r % 2 == 0 else ("separate", "folder")
            for side in order:
                where = fresh(Path(tmp), f"{side}-{r}")
                result = run_folder(where) if side == "folder" else run_one_by_one(where)
                (folder if side == "folder" else separate).append(result)
                if side == "folder":
                    last = where
                rows.append((r + 1, side, result))
                print(f"round {r + 1} {side}: {result[0]:.1f}s {result[1]}", flush=True)
        warm = run_folder(last)
    ratio = ratio_estimate([s[0] / f[0] for f, s in zip(folder, separate, strict=True)])
    total = estimate([f[0] for f in folder])
    lines = [
        "`leptonctl run -f examples/pipeline/` from a fresh directory (a copy of examples/, nothing prepared or "
        "trained): the Dataset prepared, 4 TPE trials of the tiny GPT-2 trained 2 at a time (torchrun, gloo on "
        "CPU), the final job continuing from the best trial, the server started and one completion answered. "
        "Baseline in the same rounds: the four manifests run one at a time (`leptonctl run -f` each; the "
        "service started, asked once when ready, stopped). Rounds alternate which side goes first.",
        "",
        f"- **pipeline, cold: {total.mean:.1f} s** mean ({total.spread(1)}); the request answered in every run",
        f"- time one at a time / time as a folder: {ratio.interval(2)} (above 1: the folder is faster; each "
        "one-at-a-time command pays its own start, and the service is asked by the script once its line appears)",
        f"- warm (the same folder again: nothing recomputed, the server started and asked again): {warm[0]:.1f} s",
        "",
        "| round | side | total s | " + " | ".join(f"{k} s" for k in STEPS) + " |",
        "|---|---|---|" + "---|" * len(STEPS),
    ]
    for r, side, (seconds, steps) in rows:
        cells = " | ".join(f"{steps.get(k, float('nan')):.1f}" for k in STEPS)
        lines.append(f"| {r} | {'folder' if side == 'folder' else 'one at a time'} | {seconds:.1f} | {cells} |")
    cells = " | ".join(f"{warm[1].get(k, float('nan')):.1f}" for k in STEPS)
    lines.append(f"| warm | folder | {warm[0]:.1f} | {cells} |")
    record("Pipeline: leptonctl run -f examples/pipeline/ (issue 11)", "\n".join(lines),
           f"python -m benchmarks.pipeline --rounds {args.rounds}")  # fmt: skip


if __name__ == "__main__":
    main()
