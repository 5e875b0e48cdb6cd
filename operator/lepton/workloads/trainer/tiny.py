"""Tiny models for tests and the quickstart: no hub download, everything built here.

`python -m lepton.workloads.trainer.tiny OUT --corpus FILE.jsonl` trains a byte-level BPE tokenizer on
the corpus and saves a 2-layer GPT-2 (config, weights, tokenizer) with `save_pretrained`, so the
trainer loads it through the same `from_pretrained` path as any real model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast


def make_tiny_model(out: Path, corpus: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    import torch

    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>",
                                   bos_token="<eos>")  # fmt: skip
    config = GPT2Config(vocab_size=len(fast), n_positions=128, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id,
                        pad_token_id=fast.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpus", type=Path, required=True)
    args = parser.parse_args()
    print(make_tiny_model(args.out, args.corpus))


if __name__ == "__main__":
    main()
