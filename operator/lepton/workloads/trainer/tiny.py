"""Tiny models and data for tests and the quickstart: no hub download, everything built here.

`python -m lepton.workloads.trainer.tiny OUT --corpus FILE.jsonl` trains a byte-level BPE tokenizer on
the corpus and saves a 2-layer GPT-2 (config, weights, tokenizer) with `save_pretrained`, so the
trainer loads it through the same `from_pretrained` path as any real model.

For image classification: `make_tiny_images` draws a small, well-separated image set (horizontal
stripes, a centred square, vertical stripes; seeded colours and noise), and `make_tiny_vit` writes a
ViT of 24k parameters (config and image processor, no weights: train it with init: config).
examples/images/generate.py builds the set and the model shipped in examples/ with them.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


IMAGE_CLASSES = ("horizontal", "square", "vertical")  # sorted: the label ids a class folder gets
IMAGE_SIZE = 32


def draw_image(label: str, rng: random.Random, size: int = IMAGE_SIZE) -> Any:
    """A `size` x `size` RGB PIL image of class `label` (one of IMAGE_CLASSES): contrasting random
    colours, a random stripe phase (or square size and place), and pixel noise."""
    from PIL import Image

    background = [rng.randrange(256) for _ in range(3)]
    foreground = [(c + 96 + rng.randrange(64)) % 256 for c in background]  # every channel 96+ apart
    if label == "square":
        side, jitter = rng.randrange(size * 5 // 16, size * 9 // 16), size // 10
        top, left = ((size - side) // 2 + rng.randrange(-jitter, jitter + 1) for _ in range(2))

        def on(y: int, x: int) -> bool:
            return top <= y < top + side and left <= x < left + side
    elif label in ("horizontal", "vertical"):  # stripes size/16 wide: 2 periods in each of tiny-vit's 8x8 patches
        half, phase = max(1, size // 16), rng.randrange(8)

        def on(y: int, x: int) -> bool:
            return ((y if label == "horizontal" else x) + phase) // half % 2 == 0
    else:
        raise ValueError(f"no such class {label!r}: one of {', '.join(IMAGE_CLASSES)}")
    pixels = bytearray()
    for y in range(size):
        for x in range(size):
            colour = foreground if on(y, x) else background
            pixels += bytes(min(255, max(0, c + rng.randint(-12, 12))) for c in colour)
    return Image.frombytes("RGB", (size, size), bytes(pixels))


def make_tiny_images(out: Path, per_class: int = 24, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """`out/<class>/<n>.png` for every class of IMAGE_CLASSES: the same files for the same arguments."""
    for label in IMAGE_CLASSES:
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            draw_image(label, random.Random(f"{seed}/{label}/{n}"), size).save(folder / f"{n:03d}.png", optimize=True)
    return out


def make_tiny_vit(out: Path, labels: Sequence[str] = IMAGE_CLASSES, size: int = IMAGE_SIZE) -> Path:
    """config.json (a 2-layer ViT over 8x8 patches) and preprocessor_config.json, no weights."""
    import transformers

    config = transformers.ViTConfig(image_size=size, patch_size=8, num_channels=3, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    id2label=dict(enumerate(labels)),
                                    label2id={name: i for i, name in enumerate(labels)},
                                    architectures=["ViTForImageClassification"])  # fmt: skip
    config.save_pretrained(out)
    cls: Any = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    cls(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpus", type=Path, required=True)
    args = parser.parse_args()
    print(make_tiny_model(args.out, args.corpus))


if __name__ == "__main__":
    main()
