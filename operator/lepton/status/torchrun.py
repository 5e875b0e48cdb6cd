"""What torchrun's output says about a failed worker (pure): its exit code, and the program's own last
lines without the launcher's report around them. Read from a failed container's termination message
(Kubernetes keeps its log's last 2 KiB there) or, locally, from the log itself."""

from __future__ import annotations

import re

# torchrun's summary of the first failure: "Root Cause (first observed failure): … exitcode  : 3 (pid: 42)"
_ROOT_CAUSE_EXIT = re.compile(r"Root Cause[^\n]*\n(?:[^\n]*\n){0,8}?\s*exitcode\s*:\s*(-?\d+)")
# The launcher's own log lines (glog format: E1129 08:25:19.700000 20597 …/torch/distributed/…] …).
_LAUNCHER_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+\S*torch/distributed/")
_LAUNCHER_FAILED = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
_LAUNCHER_FRAME = 'torch/distributed/run.py", line'  # a frame of the launcher's own traceback
_BANNER = re.compile(r"^\*+$|^Setting OMP_NUM_THREADS environment variable")


def worker_exit_code(text: str) -> int | None:
    """The failed worker's exit code as torchrun reports it (a signal -N as 128 + N, as a shell does);
    None when the text holds no torchrun summary."""
    match = _ROOT_CAUSE_EXIT.search(text)
    if match is None:
        return None
    code = int(match.group(1))
    return 128 - code if code < 0 else code


def program_lines(text: str, count: int = 5) -> list[str]:
    """The last `count` non-blank lines the program itself wrote before torchrun reported its failure."""
    kept: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith(_LAUNCHER_FAILED):
            break
        if _LAUNCHER_FRAME in line:  # the launcher's traceback: drop it from its header on
            header = max((i for i, k in enumerate(kept) if k.startswith("Traceback (most recent call")), default=None)
            kept = kept[:header] if header is not None else kept
            break
        if not line.strip() or _LAUNCHER_LOG.match(line) or _BANNER.match(line.strip()):
            continue
        kept.append(line)
    return kept[-count:]
