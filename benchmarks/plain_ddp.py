"""The P2 baseline: a hand-written plain DDP loop (torchrun target) doing the trainer's work with nothing
else: no schedule bookkeeping, checkpoints, progress, metrics or SIGTERM checks.

The same work, sample for sample: the same model and tokenizer, rows tokenised the same way (truncated to
--max-length, rows of one token dropped), the same seeded data order (rows permuted once with epoch -1,
then a fresh permutation every epoch, the tail of an epoch too small for a step skipped, rank r taking the
r-th batch of each step's block), AdamW with the same learning rate and weight decay, clipping at the
same norm, dropout on (train mode), and the same seed before the model loads. Prints one JSON line: its
samples/s, and the optimizer steps and samples it counted (summed over the ranks), for the step check.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, AutoTokenizer


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The trainer's permutation of n samples for an epoch (written out here; the benchmark checks that
    it equals lepton.workloads.trainer.data.epoch_order)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [int(i) for i in torch.randperm(n, generator=g)]


def load_samples(data_file: str, tok: Any, pad_id: int, seed: int, max_length: int) -> tuple[torch.Tensor, ...]:
    """Rows in the trainer's order, tokenised, one-token rows dropped, padded once into one tensor:
    (input ids, attention mask, lengths)."""
    with open(data_file) as fh:
        rows = [json.loads(line)["text"] for line in fh if line.strip()]
    rows = [rows[i] for i in epoch_order(len(rows), seed, -1)]
    encoded = tok(rows, truncation=True, max_length=max_length)["input_ids"]
    samples = [ids for ids in encoded if len(ids) > 1]
    width = max(len(s) for s in samples)
    lengths = torch.tensor([len(s) for s in samples])
    all_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    for i, s in enumerate(samples):
        all_ids[i, : len(s)] = torch.tensor(s)
    return all_ids, (torch.arange(width)[None, :] < lengths[:, None]).long(), lengths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("data_file")
    parser.add_argument("steps", type=int)
    parser.add_argument("batch", type=int)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--weight-decay", type=float, required=True)
    parser.add_argument("--max-grad-norm", type=float, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = DistributedDataParallel(AutoModelForCausalLM.from_pretrained(args.model_dir))
    model.train()  # from_pretrained returns eval mode; training means dropout on, as in the trainer

    all_ids, all_mask, lengths = load_samples(args.data_file, tok, pad_id, args.seed, args.max_length)
    n = len(lengths)

    opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    per_step = world * args.batch
    epoch, position, order = 0, 0, epoch_order(n, args.seed, 0)
    steps_done, seen, loss = 0, 0, torch.zeros(())
    started = time.monotonic()
    for _ in range(args.steps):
        if position + per_step > n:
            epoch, position = epoch + 1, 0
            order = epoch_order(n, args.seed, epoch)
        first = position + rank * args.batch
        idx = torch.tensor(order[first : first + args.batch])
        position += per_step
        # Trim to the batch's longest row, as the trainer's dynamic padding does.
        cut = int(lengths[idx].max())
        ids, mask = all_ids[idx, :cut], all_mask[idx, :cut]
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps_done += 1
        seen += len(idx)
    elapsed = time.monotonic() - started
    counted = torch.tensor([seen], dtype=torch.long)
    dist.all_reduce(counted)
    if rank == 0:
        total = int(counted.item())
        report = {"samples_per_second": total / elapsed, "seconds": elapsed, "steps": steps_done, "samples": total,
                  "rows": n, "epochs": epoch + position / n, "final_loss": float(loss)}  # fmt: skip
        print(json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
