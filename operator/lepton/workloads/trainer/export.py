"""Post-training dynamic int8 quantization of the exported model, and loading it back.

`quantize_dynamic` stores int8 weights for every nn.Linear and quantizes activations on the fly; the
result is saved as a state dict beside the fp32 model, and `load_int8` rebuilds it from that model's
own config, so loading goes through `from_pretrained` as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

INT8_FILE = "model-int8.pt"


def _quantize(model: Any) -> Any:
    return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def export_int8(model: Any, out: Path) -> int:
    """Save the int8 variant of `model` into `out`; returns how many layers were quantized."""
    quantized = _quantize(model)
    torch.save(quantized.state_dict(), out / INT8_FILE)
    return sum(1 for m in quantized.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__)


def load_int8(path: Path, model_class: Any) -> Any:
    """The int8 model saved in `path` (with the fp32 model's config and architecture)."""
    model = _quantize(model_class.from_pretrained(path))
    model.load_state_dict(torch.load(path / INT8_FILE, weights_only=False))
    return model.eval()
