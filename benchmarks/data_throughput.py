"""P5: the data workload's steps against a naive pandas + per-row Python pipeline, and its peak memory.

Part 1, throughput. A synthetic corpus of short ticket-like texts (--rows, default 1M), generated here
with a fixed seed: about 10% exact repeats of an earlier row, 10% near repeats (a last word changed or
added), PII in about a third of the rows, and noise for normalisation (full-width letters, ligatures,
no-break and doubled spaces, zero-width characters). Both sides do the same work per row: NFKC and
whitespace normalisation, exact dedupe (64-bit BLAKE2b of the text), MinHash near dedupe (5-word
shingles, 14 bands x 8 rows) and tokenisation with examples/models/tiny-gpt2 (truncated to 128 tokens).
- lepton: lepton.workloads.data.steps (normalize, dedupe exact, dedupe minhash) and stages.Tokenizer
  over Arrow batches of --batch rows: pyarrow.compute kernels, numpy MinHash, tokenizers' encode_batch.
- naive: a pandas DataFrame walked row by row in Python: unicodedata + re, hashlib and a set, a per-row
  MinHash (hashlib per shingle, numpy for the 112 permutations) with a set per band, tokenizer.encode
  per row: what a straightforward script does.
The sides alternate for --rounds rounds (the first side alternating too). The naive side is timed on
the first --naive-rows rows only (a full million takes it many minutes); both are reported as rows/s,
and the results say so. Per round the ratio lepton/naive rows/s; their geometric mean with a 95%
interval (benchmarks/stats.py). Goal: at least 5x; "met" or "missed" only when the whole interval says so.
The kept-row counts of both sides on the naive subset are printed side by side (exact dedupe must agree
exactly; near dedupe uses different hash functions, so only roughly).

Part 2, memory. `python -m lepton.workloads.data --config FILE` (the real entry point) on generated
jsonl input of at least 4x the DataConfig's memoryLimitBytes (--memory-limit-mib, default 256, so
input >= 1 GiB), pipeline normalize, exact and MinHash dedupe, maskPii, split 0.9/0.1, tokenize. The
peak RSS of that one child comes from os.wait4's rusage (ru_maxrss). Goal: under the limit.

    python -m benchmarks.data_throughput --rounds 3 --rows 1000000 --naive-rows 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
from tokenizers import Tokenizer as FastTokenizer

from benchmarks.results import record
from benchmarks.stats import cv, estimate, ratio_estimate
from lepton.api.contract import DataConfig, DataInput
from lepton.api.dataset import Step
from lepton.workloads.data.stages import Tokenizer
from lepton.workloads.data.steps import build_steps

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "examples" / "models" / "tiny-gpt2"
TITLE = "P5 data preparation throughput and memory"
GOAL = 5.0
MAX_LENGTH, NGRAM, BANDS, ROWS_PER_BAND = 128, 5, 14, 8
MiB = 1 << 20
SIDES = ("lepton", "naive")
PIPELINE = [{"normalize": {}}, {"dedupe": {"method": "exact"}}, {"dedupe": {"method": "minhash"}}]

PRODUCTS = ["printer", "laptop", "router", "VPN client", "mail app", "phone", "monitor", "docking station",
            "badge reader", "payroll portal", "CRM", "wiki", "build server", "coffee machine"]  # fmt: skip
PROBLEMS = ["does not start", "is very slow", "shows an error", "keeps disconnecting", "crashed twice",
            "will not print", "asks for my password again", "lost my settings", "freezes on login",
            "cannot find the network"]  # fmt: skip
WORDS = (  # noqa: SIM905 - a sentence reads better than a list of words
    "since this morning after the update yesterday when I open it on floor three in the office from home "
    "please help urgently the screen says code again every time we tried restarting already nothing "
    "changed colleagues have it too our team cannot work customer waiting deadline today"
).split()
# An agent's free-text notes per record (~600 bytes), so that records have a realistic size beside the text.
NOTES = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(100)) for i in range(97)]
NOISE = ["ﬁle", "ｅｒｒｏｒ", "\u00a0", "  ", "\u200b", " \t"]


def log(msg: str) -> None:
    print(f"[P5 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def corpus(rows: int, seed: int) -> list[str]:
    """Ticket-like texts with exact and near repeats, PII and normalisation noise (deterministic)."""
    rng = np.random.default_rng(seed)
    product, problem = rng.integers(len(PRODUCTS), size=rows), rng.integers(len(PROBLEMS), size=rows)
    words = rng.integers(len(WORDS), size=(rows, 14))
    pii, noise, ticket = rng.random(rows), rng.integers(len(NOISE) * 4, size=rows), rng.integers(10**7, size=rows)
    kind, source = rng.random(rows), rng.integers(0, np.maximum(np.arange(rows), 1))
    out: list[str] = []
    for i in range(rows):
        if i and kind[i] < 0.10:  # an exact repeat of an earlier row
            out.append(out[source[i]])
            continue
        if i and kind[i] < 0.20:  # a near repeat: the last word changed, or one word added
            base = out[source[i]]
            out.append(base.rsplit(" ", 1)[0] + " thanks" if kind[i] < 0.15 else base + " again")
            continue
        extra = ""
        if pii[i] < 0.12:
            extra = f" mail me at user{ticket[i]}@example.com"
        elif pii[i] < 0.22:
            extra = f" call +1 555 {ticket[i] % 1000:03d} {ticket[i] % 9000 + 1000}"
        elif pii[i] < 0.32:
            extra = f" from host 10.{ticket[i] % 256}.{ticket[i] // 256 % 256}.7"
        n = NOISE[noise[i]] if noise[i] < len(NOISE) else " "
        body = " ".join(WORDS[w] for w in words[i])
        out.append(f"Ticket {ticket[i]}: my {PRODUCTS[product[i]]} {PROBLEMS[problem[i]]}{n}{body}{extra}")
    return out


# --- the two sides ----------------------------------------------------------------------------------
STAGES = ("normalize", "exact dedupe", "near dedupe", "tokenize")


@dataclass
class Result:
    side: str
    round: int
    position: int
    rows: int
    kept: int
    tokens: int
    seconds: float
    stages: list[float]  # seconds in each of STAGES

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def lepton(texts: pa.Array, batch: int) -> tuple[int, int, list[float]]:
    steps = build_steps([Step.model_validate(s) for s in PIPELINE], "text")
    tokenizer = Tokenizer(str(TOKENIZER), MAX_LENGTH)
    kept = tokens = 0
    stages = [0.0] * len(STAGES)
    for start in range(0, len(texts), batch):
        table = pa.table({"text": texts.slice(start, batch)})
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            table = step.apply(table)
            stages[i] += time.perf_counter() - t0
        t0 = time.perf_counter()
        table = tokenizer.apply(table, "text")
        stages[3] += time.perf_counter() - t0
        kept += table.num_rows
        tokens += len(table["input_ids"].combine_chunks().values) if table.num_rows else 0
    return kept, tokens, stages


_SPACE, _ZERO_WIDTH = re.compile(r"\s+"), re.compile("[\u200b-\u200d\u2060\ufeff]")


def naive(texts: list[str]) -> tuple[int, int, list[float]]:
    tokenizer = FastTokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    rng = np.random.default_rng(1)
    a = rng.integers(1, 2**63, BANDS * ROWS_PER_BAND, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, BANDS * ROWS_PER_BAND, dtype=np.uint64)
    seen: set[bytes] = set()
    bands: list[set[bytes]] = [set() for _ in range(BANDS)]
    frame = pd.DataFrame({"text": texts})
    out_text: list[str] = []
    out_ids: list[list[int]] = []
    clock = time.perf_counter
    stages = [0.0] * len(STAGES)
    for raw in frame["text"]:
        t0 = clock()
        text = _SPACE.sub(" ", _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", raw))).strip()
        t1 = clock()
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        duplicate = digest in seen
        seen.add(digest)
        t2 = clock()
        stages[0] += t1 - t0
        stages[1] += t2 - t1
        if duplicate:
            continue
        words = text.split()
        shingles = [" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))]
        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                           for s in shingles], np.uint64)  # fmt: skip
        with np.errstate(over="ignore"):
            signature = ((hashes[None, :] * a[:, None] + b[:, None]) >> np.uint64(32)).min(axis=1)
        keys = [signature[i * ROWS_PER_BAND : (i + 1) * ROWS_PER_BAND].tobytes() for i in range(BANDS)]
        near = any(k in bands[i] for i, k in enumerate(keys))
        if not near:
            for i, k in enumerate(keys):
                bands[i].add(k)
        t3 = clock()
        stages[2] += t3 - t2
        if near:
            continue
        out_text.append(text)
        out_ids.append(tokenizer.encode(text).ids)
        stages[3] += clock() - t3
    result = pd.DataFrame({"text": out_text, "input_ids": out_ids})
    return len(result), int(result["input_ids"].map(len).sum()), stages


# --- part 2: peak memory of the workload process ------------------------------------------------------
def write_inputs(directory: Path, at_least: int, seed: int) -> tuple[int, int]:
    """jsonl files of ticket records (text + a few fields) adding up to at least `at_least` bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    size = rows = part = 0
    while size < at_least:
        texts = corpus(250_000, seed + part)
        path = directory / f"tickets-{part:03d}.jsonl"
        with path.open("w") as fh:
            for i, t in enumerate(texts):
                fh.write(json.dumps({"id": rows + i, "queue": PRODUCTS[i % len(PRODUCTS)], "priority": i % 4,
                                     "text": t, "notes": NOTES[i % len(NOTES)] + t[::-1]},
                                    ensure_ascii=False) + "\n")  # fmt: skip
        rows += len(texts)
        size += path.stat().st_size
        part += 1
    return size, rows


@dataclass
class Memory:
    limit: int
    input_bytes: int
    input_rows: int
    peak_rss: int
    seconds: float
    exit_code: int
    summary: dict[str, Any]
    stderr_tail: str


def measure_memory(work: Path, limit_mib: int, seed: int) -> Memory:
    limit = limit_mib * MiB
    log(f"writing >= {4 * limit_mib} MiB of jsonl")
    size, rows = write_inputs(work / "input", 4 * limit, seed)
    log(f"input: {size / MiB:.0f} MiB, {rows} rows")
    steps = [*PIPELINE, {"maskPii": {}}]
    config = DataConfig.model_validate({
        "dataset": "bench/p5", "sources": [DataInput(path=str(work / "input"), format="jsonl").model_dump(
            by_alias=True, exclude_none=True)], "pipeline": steps,
        "split": {"train": 0.9, "validation": 0.1, "seed": 0}, "tokenizerPath": str(TOKENIZER),
        "maxLength": MAX_LENGTH, "outputDir": str(work / "out"), "memoryLimitBytes": limit, "metricsPort": 0,
        "terminationLog": str(work / "summary.json"),
    })  # fmt: skip
    cfg = work / "config.json"
    cfg.write_text(config.model_dump_json(by_alias=True, exclude_none=True))
    log("running python -m lepton.workloads.data")
    t0 = time.perf_counter()
    with open(work / "stderr.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lepton.workloads.data", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    summary_path = work / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    tail = "\n".join((work / "stderr.log").read_text().splitlines()[-5:])
    return Memory(limit, size, rows, usage.ru_maxrss * 1024, seconds, proc.returncode, summary, tail)


# --- report -------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, runs: list[Result], counts: dict[str, tuple[int, int]],
           memory: Memory | None) -> str:  # fmt: skip
    lines = [
        f"Corpus: {args.rows} synthetic ticket texts (seed {args.seed}); lepton timed on all of them in "
        f"batches of {args.batch}, naive (pandas + per-row Python) on the first {args.naive_rows} only, because "
        f"it needs minutes per million rows: both compared as rows/s. Steps: NFKC + whitespace normalisation, "
        f"exact dedupe, MinHash dedupe ({NGRAM}-word shingles, {BANDS}x{ROWS_PER_BAND}), tokenize (tiny-gpt2, "
        f"max {MAX_LENGTH}). {args.rounds} rounds, sides alternating.",
        "",
        "| round | order | side | rows | kept | tokens | seconds | rows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r.round} | {r.position} | {r.side} | {r.rows} | {r.kept} | {r.tokens} | {r.seconds:.1f} "
                     f"| {r.rate:,.0f} |")  # fmt: skip
    rates = {s: [r.rate for r in runs if r.side == s] for s in SIDES}
    ratios = [lep.rate / nai.rate for lep, nai in zip(*([r for r in runs if r.side == s] for s in SIDES), strict=True)]
    est = ratio_estimate(ratios)
    verdict = (
        "met"
        if est.n > 1 and est.low >= GOAL
        else "missed"
        if est.n > 1 and est.high < GOAL
        else (
            "met (point estimate; the interval straddles the goal)" if est.mean >= GOAL else "missed (point estimate)"
        )
    )
    lines += [
        "",
        *(f"- {s}: mean {estimate(rates[s]).mean:,.0f} rows/s, {estimate(rates[s]).spread(0)}, "
          f"cv {cv(rates[s]):.3f}" for s in SIDES),
        f"- ratio lepton/naive rows/s per round: {', '.join(f'{x:.1f}' for x in ratios)}; "
        f"geometric mean {est.interval(1)}; {est.spread(1)}",
        f"- goal >= {GOAL:g}x: **{verdict}**",
        f"- same {args.naive_rows} rows, kept after dedupe: lepton {counts['lepton'][0]}, naive {counts['naive'][0]}"
        f" (exact dedupe alone: lepton {counts['lepton-exact'][0]}, naive {counts['naive-exact'][0]}); tokens: "
        f"lepton {counts['lepton'][1]}, naive {counts['naive'][1]}",
    ]  # fmt: skip
    lines += [
        "",
        "Where the time goes, microseconds per input row (mean over rounds; each side's own stages):",
        "",
        f"| side | {' | '.join(STAGES)} | steps without tokenize |",
        "|---|---|---|---|---|---|",
    ]
    per_row: dict[str, list[float]] = {}
    for side in SIDES:
        mine = [r for r in runs if r.side == side]
        per_row[side] = [sum(r.stages[i] / r.rows for r in mine) / len(mine) * 1e6 for i in range(len(STAGES))]
        lines.append(f"| {side} | {' | '.join(f'{x:.1f}' for x in per_row[side])} | {sum(per_row[side][:3]):.1f} |")
    steps_ratio = sum(per_row["naive"][:3]) / sum(per_row["lepton"][:3])
    token_ratio = per_row["naive"][3] / per_row["lepton"][3]
    lines += [
        "",
        f"- steps only (normalize + both dedupes): lepton {steps_ratio:.1f}x naive per row; tokenize: "
        f"{token_ratio:.1f}x (the same tokenizers library on both sides: encode_batch against encode per "
        f"row, with {os.cpu_count()} cores shared with other work here)",
        "",
    ]
    if memory is None:
        lines.append("Memory part not run (--skip-memory).")
    else:
        m = memory
        ok = m.exit_code == 0 and m.peak_rss < m.limit
        lines += [
            f"Memory: `python -m lepton.workloads.data` with memoryLimitBytes {m.limit / MiB:.0f} MiB on "
            f"{m.input_bytes / MiB:.0f} MiB of jsonl ({m.input_rows} rows, {m.input_bytes / m.limit:.1f}x the "
            f"limit); pipeline normalize, exact and MinHash dedupe, maskPii, split 0.9/0.1, tokenize.",
            "",
            f"- exit code {m.exit_code} after {m.seconds:.0f} s; peak RSS (wait4 ru_maxrss) "
            f"{m.peak_rss / MiB:.0f} MiB = {m.peak_rss / m.limit:.2f} of the limit",
            f"- summary: rows {m.summary.get('rows')}, steps "
            f"{[(s['step'], s['rowsIn'], s['rowsOut']) for s in m.summary.get('steps', [])]}",
            f"- goal peak RSS < limit: **{'met' if ok else 'missed'}**",
            f"- what grows with the input: dedupe state, 8 bytes per kept row (exact) + {8 * BANDS} (MinHash, "
            f"{BANDS} bands) = {8 * (1 + BANDS) * m.summary.get('steps', [{}])[-1].get('rowsOut', 0) / MiB:.0f} MiB "
            f"here, the rest of the peak is not; batches are {m.limit // 16 / MiB:.0f} MiB of input)",
        ]
        if m.exit_code != 0:
            lines.append(f"- stderr tail: `{m.stderr_tail[-400:]}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--naive-rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=65_536, help="lepton's rows per Arrow batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-mib", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()

    log(f"generating {args.rows} rows")
    texts = corpus(args.rows, args.seed)
    column = pa.array(texts, pa.string())
    subset = texts[: args.naive_rows]
    counts = {"lepton": lepton(column.slice(0, args.naive_rows), args.batch)[:2], "naive": naive(subset)[:2]}
    exact = build_steps([Step.model_validate(s) for s in PIPELINE[:2]], "text")
    table = pa.table({"text": column.slice(0, args.naive_rows)})
    for step in exact:
        table = step.apply(table)
    counts["lepton-exact"] = (table.num_rows, 0)
    normal = [_SPACE.sub(" ", _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", t))).strip() for t in subset]
    counts["naive-exact"] = (len(set(normal)), 0)
    log(f"kept on the subset: {counts}")
    runs: list[Result] = []
    for rnd in range(1, args.rounds + 1):
        for pos, side in enumerate(SIDES if rnd % 2 else SIDES[::-1], 1):
            t0 = time.perf_counter()
            if side == "lepton":
                kept, tokens, stages = lepton(column, args.batch)
                rows = args.rows
            else:
                kept, tokens, stages = naive(subset)
                rows = len(subset)
            runs.append(Result(side, rnd, pos, rows, kept, tokens, time.perf_counter() - t0, stages))
            log(f"round {rnd} {side}: {rows} rows in {runs[-1].seconds:.1f} s = {runs[-1].rate:,.0f} rows/s")
    memory = None
    if not args.skip_memory:
        with tempfile.TemporaryDirectory(prefix="lepton-p5-") as tmp:
            memory = measure_memory(Path(tmp), args.memory_limit_mib, args.seed + 1000)
        log(f"memory: exit {memory.exit_code}, peak RSS {memory.peak_rss / MiB:.0f} MiB in {memory.seconds:.0f} s")
    body = report(args, runs, counts, memory)
    command = (f"python -m benchmarks.data_throughput --rounds {args.rounds} --rows {args.rows} "
               f"--naive-rows {args.naive_rows} --batch {args.batch} --memory-limit-mib {args.memory_limit_mib}"
               + (" --skip-memory" if args.skip_memory else ""))  # fmt: skip
    if args.no_record:
        print(body)
    else:
        record(TITLE, body, command)


if __name__ == "__main__":
    main()
