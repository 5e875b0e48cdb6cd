"""P3: Lepton's model server (dynamic batching) against a naive one-request-per-forward server.

Same model on both sides: a GPT-2 built here from a config (4 layers, 256 wide, 4 heads, float32, CPU) with
the byte-level BPE tokenizer that lepton.workloads.trainer.tiny trains on examples/data/tickets.jsonl.
Lepton is `python -m lepton.workloads.server` with a ServerConfig in $LEPTON_SERVER_CONFIG; the baseline is
benchmarks/naive_server.py (one `model.generate` per request, under a lock). Both get the same thread
settings (OMP_NUM_THREADS = MKL_NUM_THREADS = --threads; the naive server also calls torch.set_num_threads).

The request is POST /v1/completions with temperature 0 and max_tokens 8, its prompt one of 8 ticket
questions in turn. Prompts are chosen so that the greedy completion is all 8 tokens with no end-of-text,
and every answer's usage is checked to be 8 tokens, so both sides do the same work per request.

Load is CLOSED-LOOP, from a separate process: vegeta (built once into the Lepton cache, see loadgen.py)
with -rate=0 and exactly C workers, each sending its next request when the previous one is answered; if
vegeta cannot be built, a Python aiohttp process runs the same loop (the results then say so). Per round,
both servers are started (and stay up for the round; the idle one's CPU is measured), and for each
concurrency both are loaded back to back, each after a warm-up at the same concurrency, the order
alternating from round to round so slow drift of the shared cores falls on both. Per concurrency the
result is the Lepton/naive ratio per round (throughput, p50, p99), their geometric mean with a 95%
interval (benchmarks/stats.py), median and range; every run is listed. Only successful requests count in
throughput and latency; errors are counted apart. Goals: at least 4x naive's throughput at C=32, and a
p99 at C=1 no worse than naive's; the verdict is "met" or "missed" only when the whole interval says so.

    python -m benchmarks.server_throughput --rounds 3 --duration 20 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import aiohttp
import torch
import transformers

from benchmarks.loadgen import Generator, Load, generator, summarize
from benchmarks.results import record
from benchmarks.stats import Estimate, cv, ratio_estimate
from lepton.api.contract import ServerConfig
from lepton.workloads.trainer.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "tickets.jsonl"
TITLE = "P3 server throughput and latency"
NAME = "bench"
LAYERS, WIDTH, HEADS, POSITIONS = 4, 256, 4, 256
MAX_TOKENS = 8
PROMPTS = 8
THROUGHPUT_GOAL, THROUGHPUT_AT = 4.0, 32  # Lepton/naive requests/s at concurrency 32: at least 4x
P99_GOAL, P99_AT = 1.0, 1  # Lepton/naive p99 at concurrency 1: no worse
SIDES = ("naive", "lepton")


def log(msg: str) -> None:
    print(f"[P3 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int
    completion: str  # the greedy completion by transformers' own generate, the reference


def build_model(out: Path, threads: int) -> tuple[int, int, list[Prompt]]:
    """Save the benchmark model into `out` (the tiny tokenizer, a bigger GPT-2) and pick the prompts: ticket
    questions whose greedy completion runs the full MAX_TOKENS without end-of-text, so no request stops early.
    Returns (vocabulary size, parameters, prompts)."""
    make_tiny_model(out, DATA)  # trains and saves the tokenizer; its 2-layer model is replaced below
    tok = transformers.AutoTokenizer.from_pretrained(out)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=POSITIONS, n_embd=WIDTH, n_layer=LAYERS,
                                     n_head=HEADS, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel(config)
    model.train(False)
    model.save_pretrained(out)
    prompts: list[Prompt] = []
    for line in DATA.read_text().splitlines():
        text = json.loads(line)["text"]
        question = text[: text.index("Answer:") + len("Answer:")] if "Answer:" in text else text
        enc = tok(question, return_tensors="pt")
        with torch.inference_mode():
            out_ids = cast(Any, model).generate(
                **enc, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id
            )
        new = out_ids[0, enc["input_ids"].shape[1] :]
        if len(new) == MAX_TOKENS and tok.eos_token_id not in new.tolist():
            completion = str(tok.decode(new, skip_special_tokens=True))
            prompts.append(Prompt(question, int(enc["input_ids"].shape[1]), completion))
        if len(prompts) == PROMPTS:
            break
    if len(prompts) < PROMPTS:
        raise SystemExit(f"only {len(prompts)} prompts complete {MAX_TOKENS} tokens without end-of-text")
    return len(tok), sum(p.numel() for p in model.parameters()), prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    side: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> None:
        """Start and wait for GET /v2/health/ready to answer 200 (the model is loaded)."""
        self._log = self.logfile.open("wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.side} server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        log(f"{self.side} server ready on :{self.port} after {time.monotonic() - t0:.1f} s")
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"{self.side} server not ready after {timeout:.0f} s:\n{self.tail()}")

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def tail(self) -> str:
        return self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


def body(prompt: str) -> bytes:
    return json.dumps({"model": NAME, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}).encode()


def check_answers(server: Server, prompts: list[Prompt]) -> int:
    """Each prompt once: fail unless 200 with MAX_TOKENS completion tokens (when usage is given); return how
    many completions equal transformers' own greedy completion (informational: batching pads inputs)."""
    same = 0
    for p in prompts:
        req = urllib.request.Request(server.base + "/v1/completions", data=body(p.text),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{server.side}: /v1/completions answered {exc.code}: {exc.read()[:500]!r}") from exc
        tokens = answer.get("usage", {}).get("completion_tokens", MAX_TOKENS)
        if tokens != MAX_TOKENS:
            raise SystemExit(f"{server.side} generated {tokens} tokens, not {MAX_TOKENS}: not the same work")
        same += answer["choices"][0]["text"] == p.completion
    return same


@dataclass
class Run:
    round: int
    concurrency: int
    side: str
    position: int  # 1: loaded first in its pair, 2: second
    load: Load
    server_cpu: float  # CPU seconds of the loaded server during the measured attack
    idle_cpu: float  # CPU seconds of the other, idle server meanwhile
    reference: int  # answers equal to the reference greedy completion


@dataclass
class Bench:
    """What every run shares: the flags, the load generator, the model and its prompts."""

    args: argparse.Namespace
    gen: Generator
    vocab: int
    params: int
    prompts: list[Prompt]

    def measure(self, server: Server, other: Server, *, c: int, rnd: int, position: int) -> Run:
        """A warm-up, then the measured closed-loop attack at concurrency c; fails if any answer was short."""
        url, bodies = server.base + "/v1/completions", [body(p.text) for p in self.prompts]
        if self.args.warmup > 0:
            self.gen.attack(url, bodies, c, self.args.warmup)
        cpu0, idle0 = server.cpu(), other.cpu()
        load = summarize(self.gen.attack(url, bodies, c, self.args.duration), c)
        reference = {p.completion for p in self.prompts}
        run = Run(rnd, c, server.side, position, load, server.cpu() - cpu0, other.cpu() - idle0,
                  sum(n for text, n in load.texts.items() if text in reference))  # fmt: skip
        short = {k: n for k, n in load.completion_tokens.items() if k not in {MAX_TOKENS, -1}}
        if short:
            raise SystemExit(f"{server.side} at C={c}: completion tokens {short} (count by length), not {MAX_TOKENS}")
        err = f" ({load.errors.most_common(1)[0][0]})" if load.errors else ""
        log(f"round {rnd} C={c} {server.side}: {load.rps:.1f} req/s, p50 {load.p50_ms:.0f} ms, "
            f"p99 {load.p99_ms:.0f} ms, {load.ok} ok, {load.failed} failed{err}")  # fmt: skip
        return run


def lepton_config(args: argparse.Namespace, model: Path, port: int) -> ServerConfig:
    doc: dict[str, object] = {"name": NAME, "task": "causal-lm", "modelPath": str(model), "host": "127.0.0.1",
                              "port": port, "device": "cpu", "dtype": "float32", "maxBatchSize": args.max_batch_size,
                              "maxOutputTokens": MAX_TOKENS, "drainSeconds": 1}  # fmt: skip
    if args.max_batch_delay_ms is not None:
        doc["maxBatchDelayMs"] = args.max_batch_delay_ms
    return ServerConfig.model_validate(doc)


def make_servers(args: argparse.Namespace, model: Path, work: Path, rnd: int) -> dict[str, Server]:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    ports = {side: free_port() for side in SIDES}
    naive = [sys.executable, "-m", "benchmarks.naive_server", "--model", str(model), "--name", NAME,
             "--port", str(ports["naive"]), "--threads", threads, "--max-output-tokens", str(MAX_TOKENS)]  # fmt: skip
    config = lepton_config(args, model, ports["lepton"])
    lepton_env = {**env, "LEPTON_SERVER_CONFIG": config.model_dump_json(by_alias=True)}
    if args.lepton_cmd:
        lepton = shlex.split(args.lepton_cmd.format(model=model, port=ports["lepton"], threads=threads))
    else:
        lepton = [sys.executable, "-m", "lepton.workloads.server"]
    return {"naive": Server("naive", naive, env, ports["naive"], work / f"naive-{rnd}.log"),
            "lepton": Server("lepton", lepton, lepton_env, ports["lepton"], work / f"lepton-{rnd}.log")}  # fmt: skip


@dataclass
class Summary:
    concurrency: int
    throughput: Estimate
    p50: Estimate
    p99: Estimate
    rps: dict[str, list[float]] = field(default_factory=dict)


def summarize_runs(runs: list[Run], concurrency: list[int]) -> list[Summary]:
    out = []
    for c in concurrency:
        by = {(r.round, r.side): r.load for r in runs if r.concurrency == c}
        rounds = sorted({rnd for rnd, _ in by})
        pairs = [(by[rnd, "lepton"], by[rnd, "naive"]) for rnd in rounds]
        if any(le.ok == 0 or na.ok == 0 for le, na in pairs):
            raise SystemExit(f"C={c}: a run had no successful request")
        out.append(Summary(
            c, ratio_estimate([le.rps / na.rps for le, na in pairs]),
            ratio_estimate([le.p50_ms / na.p50_ms for le, na in pairs]),
            ratio_estimate([le.p99_ms / na.p99_ms for le, na in pairs]),
            {side: [by[rnd, side].rps for rnd in rounds] for side in SIDES}))  # fmt: skip
    return out


def verdict(est: Estimate, goal: float, *, higher: bool) -> str:
    """Met / missed only when the whole 95% interval is on one side of the goal."""
    word = "at or above" if higher else "at or below"
    point = f"{est.mean:.2f}x"
    if math.isnan(est.low):
        ok = est.mean >= goal if higher else est.mean <= goal
        return f"one round gives no interval: {point} is {'' if ok else 'not '}{word} {goal:g}x; run more rounds"
    if (est.low >= goal) if higher else (est.high <= goal):
        return f"**met**: the whole interval is {word} {goal:g}x"
    if (est.high < goal) if higher else (est.low > goal):
        return f"**missed**: the whole interval is {'below' if higher else 'above'} {goal:g}x"
    return f"not settled at this many rounds: the interval straddles {goal:g}x (mean {point})"


def report(bench: Bench, runs: list[Run], config: ServerConfig, commit: str) -> str:
    args, gen, prompts = bench.args, bench.gen, bench.prompts
    summaries = summarize_runs(runs, args.concurrency)
    by_c = {s.concurrency: s for s in summaries}
    lens = sorted(p.tokens for p in prompts)
    idle = max(r.idle_cpu for r in runs)
    lepton_cmd = f"`{args.lepton_cmd}` (override, NOT the Lepton server)" if args.lepton_cmd else (
        "`python -m lepton.workloads.server`")  # fmt: skip
    settings = ", ".join(f"{k} {v}" for k, v in config.model_dump(by_alias=True).items()
                         if k.startswith("max") or k in ("device", "dtype"))  # fmt: skip
    lines = [
        f"GPT-2 built here from a config ({LAYERS} layers, {WIDTH} wide, {HEADS} heads, vocabulary {bench.vocab}, "
        f"{bench.params / 1e6:.1f} M parameters), float32 on CPU; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, aiohttp {aiohttp.__version__}; Lepton at commit {commit}.",
        f"Request: POST /v1/completions, temperature 0, max_tokens {MAX_TOKENS}, the prompt one of {len(prompts)} "
        f"ticket questions in turn ({lens[0]}-{lens[-1]} tokens); each one's greedy completion is {MAX_TOKENS} tokens "
        "without end-of-text, and every answer's usage was checked to be that, so both sides do the same work.",
        f"Servers: naive = benchmarks/naive_server.py (one `generate` per request in a worker thread under a lock); "
        f"Lepton = {lepton_cmd} with {settings}. Both with OMP_NUM_THREADS = MKL_NUM_THREADS = {args.threads} (the "
        f"naive server also calls torch.set_num_threads({args.threads})), on 127.0.0.1; both started once per round "
        f"and up for the whole round (the idle one used at most {idle:.2f} CPU-s during any run of the other).",
        f"Load: {gen.name}, in its own process, **closed loop**: exactly C requests in flight, each worker sending "
        f"its next request when the previous is answered; {args.duration:g} s per run after a {args.warmup:g} s "
        "warm-up at the same C (discarded). Throughput and latency count successful requests only; errors apart.",
        f"{args.rounds} round{'s' if args.rounds != 1 else ''}; in each, for each C, both servers back to back, "
        "the order alternating by round. "
        "Ratios are Lepton / naive within a round: geometric mean with a 95% interval (Student's t on the logs), "
        "then median and range of the per-round ratios.",
        "",
        "| C | naive req/s (median) | Lepton req/s (median) | throughput Lepton/naive | median, range | "
        "p50 Lepton/naive | p99 Lepton/naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.concurrency} | {_rate(s.rps['naive'])} | {_rate(s.rps['lepton'])} | "
            f"**{s.throughput.interval(2)}** | {s.throughput.spread(2)} | {s.p50.interval(2)} | {s.p99.interval(2)} |"
        )
    goal_t = by_c.get(THROUGHPUT_AT)
    goal_p = by_c.get(P99_AT)
    lines += [
        "",
        f"- goal: throughput at C={THROUGHPUT_AT} >= {THROUGHPUT_GOAL:g}x naive: "
        + (f"{goal_t.throughput.interval(2)}, {verdict(goal_t.throughput, THROUGHPUT_GOAL, higher=True)}"
           if goal_t else "not measured (C not run)"),
        f"- goal: p99 at C={P99_AT} no worse than naive (<= {P99_GOAL:g}x): "
        + (f"{goal_p.p99.interval(2)}, {verdict(goal_p.p99, P99_GOAL, higher=False)}" if goal_p else
           "not measured (C not run)"),
        "- errors: " + _errors(runs),
        "- answers equal to transformers' own greedy completion of their prompt: "
        + ", ".join(f"{side} {sum(r.reference for r in runs if r.side == side)}/"
                    f"{sum(r.load.ok for r in runs if r.side == side)}" for side in SIDES),
        "",
        "| round | C | side | order | req/s | p50 ms | p99 ms | mean ms | ok | failed | server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r.concurrency, r.round, r.position)):
        lo = r.load
        lines.append(f"| {r.round} | {r.concurrency} | {r.side} | {r.position} | {lo.rps:.1f} | {lo.p50_ms:.1f} | "
                     f"{lo.p99_ms:.1f} | {lo.mean_ms:.1f} | {lo.ok} | {lo.failed} | "
                     f"{r.server_cpu / max(lo.ok, 1) * 1e3:.1f} |")  # fmt: skip
    return "\n".join(lines)


def _rate(values: list[float]) -> str:
    """'41.2 (cv 3%)', or just the median with one run."""
    spread = f" (cv {cv(values):.0%})" if len(values) > 1 else ""
    return f"{statistics.median(values):.1f}{spread}"


def _errors(runs: list[Run]) -> str:
    parts = []
    for side in SIDES:
        errs: Counter[str] = Counter()
        for r in runs:
            if r.side == side:
                errs.update(r.load.errors)
        total = sum(errs.values())
        parts.append(f"{side} {total}" + (f" (most: {errs.most_common(1)[0][0][:100]!r})" if total else ""))
    return ", ".join(parts)


def git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "operator/lepton/workloads/server"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return (head or "unknown") + (" (server files modified)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20, help="seconds of measured load per run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of discarded load before each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32, help="Lepton's maxBatchSize")
    parser.add_argument("--max-batch-delay-ms", type=int, default=None, help="Lepton's maxBatchDelayMs "
                        "(default: the contract's default)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/OMP threads per server")
    parser.add_argument("--keep-model", type=Path, default=None, help="build the model here and keep it")
    # Smoke-testing the harness without the Lepton server: a command for the "lepton" side ({model}, {port},
    # {threads} filled in); and the Python fallback generator instead of vegeta.
    parser.add_argument("--lepton-cmd", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--python-loadgen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    gen = generator(force_python=args.python_loadgen)
    log(f"load generator: {gen.name}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="lepton-p3-") as tmp:
        work = Path(tmp)
        model = args.keep_model or work / "model"
        bench = Bench(args, gen, *build_model(model, args.threads))
        log(f"model in {model}: {bench.params / 1e6:.1f} M parameters; {len(bench.prompts)} prompts")
        config = lepton_config(args, model, 0)
        for rnd in range(1, args.rounds + 1):
            order = SIDES if rnd % 2 else SIDES[::-1]
            servers = make_servers(args, model, work, rnd)
            try:
                for side in order:
                    servers[side].start()
                    same = check_answers(servers[side], bench.prompts)
                    log(f"{side}: {same}/{len(bench.prompts)} answers equal the reference greedy completion")
                for c in args.concurrency:
                    for pos, side in enumerate(order, 1):
                        other = servers[SIDES[1 - SIDES.index(side)]]
                        runs.append(bench.measure(servers[side], other, c=c, rnd=rnd, position=pos))
            finally:
                for s in servers.values():
                    s.stop()
    command = (f"python -m benchmarks.server_throughput --rounds {args.rounds} --duration {args.duration:g} "
               f"--concurrency {' '.join(map(str, args.concurrency))} --max-batch-size {args.max_batch_size} "
               f"--threads {args.threads}")  # fmt: skip
    if args.max_batch_delay_ms is not None:
        command += f" --max-batch-delay-ms {args.max_batch_delay_ms}"
    if args.warmup != 3:
        command += f" --warmup {args.warmup:g}"
    if args.lepton_cmd:
        command += f" --lepton-cmd {shlex.quote(args.lepton_cmd)}"
    record(TITLE, report(bench, runs, config, git_commit()), command)


if __name__ == "__main__":
    main()
