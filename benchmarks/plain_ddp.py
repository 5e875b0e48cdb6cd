"""The P2 baseline: a hand-written plain DDP loop (torchrun target), the same model, data, batch,
optimizer and steps as the trainer, with nothing else: no schedule bookkeeping, checkpoints,
progress or metrics. Prints one JSON line with its samples/s."""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    model_dir, data_file, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = DistributedDataParallel(AutoModelForCausalLM.from_pretrained(model_dir))
    model.train()  # from_pretrained returns eval mode; training means dropout on, as in the trainer
    texts = [json.loads(line)["text"] for line in open(data_file) if line.strip()]  # noqa: SIM115
    enc = tok(texts, truncation=True, max_length=48, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=0.003)
    n = enc["input_ids"].shape[0]
    started = time.monotonic()
    for step in range(steps):
        lo = ((step * world + rank) * batch) % (n - batch)
        ids, mask = enc["input_ids"][lo : lo + batch], enc["attention_mask"][lo : lo + batch]
        # Trim to the batch's longest row, as the trainer's dynamic padding does.
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width], mask[:, :width]
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.monotonic() - started
    if rank == 0:
        print(json.dumps({"samples_per_second": steps * batch * world / elapsed, "seconds": elapsed}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
