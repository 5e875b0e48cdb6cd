"""P2: the trainer's samples/s against a hand-written plain DDP loop, same model, data and machine.

Both run under a real 2-process torchrun (gloo, CPU), alternating, `--repeats` times each; the median
of each is compared. The trainer's time excludes its checkpoint writes (reported apart). The trainer
with strategy fsdp runs in the same rotation, for information: on one machine FSDP only adds the
all-gathers and reduce-scatters that sharding costs; it pays off when the model does not fit a GPU.

    python -m benchmarks.trainer_throughput --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from benchmarks.results import record
from lepton.workloads.trainer.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "tickets.jsonl"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
            "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def trainer_run(model: Path, work: Path, steps: int, batch: int, strategy: str = "ddp") -> tuple[float, float]:
    config = {
        "job": "bench/p2", "task": "causal-lm", "modelPath": str(model), "strategy": strategy,
        "data": {"path": str(DATA)}, "backend": "gloo", "metricsPort": 0,
        "hyperparameters": {"learningRate": 0.003, "batchSize": batch, "maxSteps": steps, "maxSeqLength": 48,
                            "lrScheduler": "constant", "seed": 1},
        "checkpointDir": str(work / "ckpt"), "checkpointEverySteps": steps, "outputDir": str(work / "out"),
        "resume": "none",
    }  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([*TORCHRUN, "-m", "lepton.workloads.trainer", "--config", str(work / "config.json")],
                          env=ENV, check=False, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed:\n{proc.stderr[-3000:]}")
    meta = json.loads((work / "out" / "lepton-training.json").read_text())
    return float(meta["samples_per_second"]), float(meta["checkpoint_seconds"])


def plain_run(model: Path, steps: int, batch: int) -> float:
    out = subprocess.run([*TORCHRUN, str(ROOT / "benchmarks" / "plain_ddp.py"), str(model), str(DATA), str(steps),
                          str(batch)], env=ENV, check=False, capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"plain DDP loop failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "model", DATA)
        trainer, plain, ckpt, fsdp = [], [], [], []
        for i in range(args.repeats):
            plain.append(plain_run(model, args.steps, args.batch))
            rate, seconds = trainer_run(model, Path(tmp) / f"t{i}", args.steps, args.batch)
            trainer.append(rate)
            ckpt.append(seconds)
            fsdp.append(trainer_run(model, Path(tmp) / f"f{i}", args.steps, args.batch, "fsdp")[0])
    t, p, f = statistics.median(trainer), statistics.median(plain), statistics.median(fsdp)
    body = f"""
Tiny GPT-2 (2 layers, 64 wide, {len(DATA.read_text().splitlines())} ticket rows), 2 processes x batch {args.batch},
{args.steps} steps, gloo on CPU; torch {torch.__version__}, transformers {transformers.__version__}.
Median of {args.repeats} alternating runs each.

| run | samples/s (median) | all runs |
|---|---|---|
| baseline: hand-written plain DDP loop (benchmarks/plain_ddp.py) | {p:.0f} | {", ".join(f"{x:.0f}" for x in plain)} |
| trainer: `python -m lepton.workloads.trainer` | {t:.0f} | {", ".join(f"{x:.0f}" for x in trainer)} |
| ratio trainer / baseline | **{t / p:.3f}x** (goal >= 0.97x) | |
| for information: trainer with `strategy: fsdp` | {f:.0f} ({f / p:.3f}x) | {", ".join(f"{x:.0f}" for x in fsdp)} |

The trainer's time excludes its one final checkpoint write ({statistics.median(ckpt):.2f} s median).
"""
    record(
        "P2 trainer throughput (issue 4)",
        body,
        f"python -m benchmarks.trainer_throughput --steps {args.steps} --repeats {args.repeats}",
    )


if __name__ == "__main__":
    main()
