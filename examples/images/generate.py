"""Regenerate the tiny image set and model shipped in examples/ (deterministic: the same pixels each time).

    python examples/images/generate.py

writes examples/images/shapes/<class>/<n>.png (3 classes x 24 PNGs of 32x32: horizontal stripes, a
centred square, vertical stripes, in seeded colours with noise) and examples/models/tiny-vit/
(config.json and preprocessor_config.json of a 2-layer ViT for those 3 classes; no weights: a
TrainingJob trains it with `init: config`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lepton.workloads.trainer.tiny import IMAGE_CLASSES, make_tiny_images, make_tiny_vit

HERE = Path(__file__).resolve().parent
SHAPES = HERE / "shapes"
TINY_VIT = HERE.parent / "models" / "tiny-vit"


def main() -> None:
    shutil.rmtree(SHAPES, ignore_errors=True)
    make_tiny_images(SHAPES, per_class=24, seed=0)
    make_tiny_vit(TINY_VIT, labels=IMAGE_CLASSES)
    print(f"wrote {SHAPES} and {TINY_VIT}")


if __name__ == "__main__":
    main()
