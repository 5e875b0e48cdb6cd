"""Image classification data: a folder of class subfolders, or Parquet files with a column of encoded
images and a label column. Every image is decoded once with Pillow, converted to RGB (L for a
one-channel model) and resized to the model's input size, and kept as uint8; a batch is rescaled and
normalised with the mean and std of the model's image processor.

The training split is augmented: a random crop of the reflect-padded image and a horizontal flip,
drawn per (seed, epoch, row) from a generator of their own, so a resumed run sees the very pixels the
uninterrupted one saw, and the global random state is left alone.

The image processor saved beside the trained model (`processor`) does what training did before the
augmentation (resize to height x width, rescale by 1/255, normalise), so that
`AutoImageProcessor.from_pretrained` + `AutoModelForImageClassification.from_pretrained` on the output
classify new images as the model was trained to.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from lepton.api.contract import TrainerData
from lepton.workloads.trainer.data import DataError, read_parquet, split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SIZE = 224  # a model config without image_size, and no processor to say
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, what ViT's processor resizes with
AUGMENT_STREAM = 1 << 62  # keeps augmentation seeds apart from epoch_order's (seed < 2^32)


@dataclass(frozen=True)
class Geometry:
    """The input the model expects and how pixels become it."""

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int = BILINEAR


def _pair(size: Any) -> tuple[int, int] | None:
    """(height, width) of a config's image_size or a processor's size, in their several spellings."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        edge = size.get("shortest_edge") or size.get("longest_edge")
        return (int(edge), int(edge)) if edge else None
    return None


def _per_channel(value: Any, channels: int, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,) * channels
    values = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]
    return tuple(values * channels) if len(values) == 1 else tuple(values)


def geometry(model_path: str, config: Any) -> Geometry:
    """Size from the model config's image_size (else the processor's size, else 224), channels from its
    num_channels, mean/std/resampling from the model's preprocessor_config.json (else 0.5, bilinear)."""
    from transformers import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(model_path)
    except (OSError, ValueError):  # no preprocessor_config.json: ViT's defaults
        settings = {}
    channels = int(getattr(config, "num_channels", None) or 3)
    height, width = _pair(getattr(config, "image_size", None)) or _pair(settings.get("size")) or (DEFAULT_SIZE,) * 2
    normalize = settings.get("do_normalize", True)
    mean = _per_channel(settings.get("image_mean") if normalize else 0.0, channels, 0.5)
    std = _per_channel(settings.get("image_std") if normalize else 1.0, channels, 0.5)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"{model_path}: image_mean/image_std have {len(mean)}/{len(std)} values for a model "
                        f"of {channels} channels")  # fmt: skip
    resample = settings.get("resample")
    return Geometry(height, width, channels, mean, std, int(resample) if isinstance(resample, int) else BILINEAR)


def processor(geo: Geometry) -> Any:
    """The image processor to save with the trained model: resize, rescale, normalise as training did."""
    import transformers

    # transformers 5 names the torchvision-free processor ViTImageProcessorPil (it saves as ViTImageProcessor).
    cls: Any = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(do_resize=True, size={"height": geo.height, "width": geo.width}, resample=geo.resample,
               do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(geo.mean),
               image_std=list(geo.std))  # fmt: skip


# --- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    name: str  # what an error message calls it: a file, or "FILE row N"
    payload: bytes | Path


@dataclass(frozen=True)
class Labels:
    ids: list[int]
    names: list[str] | None  # None: integer ids with no names in the data


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip


def _read_folders(root: Path, classes: list[Path]) -> tuple[list[Item], Labels]:
    items, ids = [], []
    for label, folder in enumerate(classes):
        files = _image_files(folder)
        if not files:
            raise DataError(f"{folder}: a class folder with no {', '.join(IMAGE_SUFFIXES)} images")
        items += [Item(str(f), f) for f in files]
        ids += [label] * len(files)
    return items, Labels(ids, [c.name for c in classes])


def _class_names(schema: Any, field: str) -> list[str] | None:
    """The label names a Hugging Face dataset keeps in its Parquet metadata (a ClassLabel feature)."""
    try:
        meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        names = meta["info"]["features"][field]["names"]
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _payload(value: Any, file: Path, row: int, field: str) -> Item:
    name = f"{file} row {row}"
    if isinstance(value, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
        if value.get("path"):
            name += f" ({value['path']})"
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return Item(name, bytes(value))
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else file.parent / value
        return Item(name, path)
    raise DataError(f"{name}: no image in field {field!r} (encoded bytes, or a struct with bytes or a path)")


def _read_parquet(files: list[Path], data: TrainerData) -> tuple[list[Item], Labels]:
    items: list[Item] = []
    raw: list[Any] = []
    names: list[str] | None = None
    for file in files:
        table = read_parquet(file, [data.image_field, data.label_field])
        names = names or _class_names(table.schema, data.label_field)
        items += [_payload(v, file, i, data.image_field) for i, v in enumerate(table[data.image_field].to_pylist())]
        raw += table[data.label_field].to_pylist()
    kinds = [_kind(v) for v in raw]
    if all(k == "id" for k in kinds):
        return items, Labels(raw, names)
    if all(k == "name" for k in kinds):
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        return items, Labels([index[v] for v in raw], names)
    row = next(i for i, k in enumerate(kinds) if k is None or k != kinds[0])
    raise DataError(f"field {data.label_field!r} must hold integer class ids or label names, all of one kind "
                    f"({items[row].name}: {raw[row]!r})")  # fmt: skip


def _kind(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return "id"
    return "name" if isinstance(value, str) else None


def read_images(data: TrainerData) -> tuple[list[Item], Labels]:
    """The images and their labels: `path` is a folder of class subfolders (`<label>/*.png|jpg|jpeg`,
    labels in sorted order), a folder of Parquet files, or one Parquet file."""
    root = Path(data.path)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if data.format in ("jsonl", "csv"):
        raise DataError(f"image-classification reads class folders or Parquet, not {data.format}")
    if root.is_dir():
        parquet = sorted(p for p in root.iterdir() if p.suffix == ".parquet" and p.is_file())
        classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if parquet:
            items, labels = _read_parquet(parquet, data)
        elif classes and data.format != "parquet":
            items, labels = _read_folders(root, classes)
        else:
            raise DataError(f"{root}: no images: neither class subfolders (<label>/*.png) nor .parquet files")
    else:
        items, labels = _read_parquet([root], data)
    if not items:
        raise DataError(f"{root}: no images")
    return items, labels


def check_labels(labels: Labels, num_labels: int | None, where: str) -> int:
    """How many classes the data has; it must be numLabels when that is set."""
    if labels.names is not None:
        count = len(labels.names)
        if num_labels is not None and count != num_labels:
            shown = ", ".join(labels.names[:10]) + (", …" if count > 10 else "")
            raise DataError(f"{where}: {count} labels ({shown}) but model.numLabels is {num_labels}")
        bad = [i for i in labels.ids if not 0 <= i < count]
    else:
        count = num_labels if num_labels is not None else max(labels.ids) + 1
        bad = [i for i in labels.ids if not 0 <= i < count]
    if bad:
        raise DataError(f"{where}: label id {bad[0]} is outside 0..{count - 1} (model.numLabels is {count})")
    return count


def decode(item: Item, geo: Geometry) -> torch.Tensor:
    """One image as uint8 (channels, height, width) at the model's size."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("image-classification needs Pillow in the trainer image") from exc
    try:
        source = io.BytesIO(item.payload) if isinstance(item.payload, bytes) else item.payload
        with Image.open(source) as image:
            converted = image.convert("L" if geo.channels == 1 else "RGB")
        resized = converted.resize((geo.width, geo.height), resample=geo.resample)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # incl. UnidentifiedImageError
        raise DataError(f"{item.name}: cannot decode the image ({exc})") from None
    pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
    return pixels.view(geo.height, geo.width, -1).permute(2, 0, 1)


# --- samples ---------------------------------------------------------------------------------------
class Images:
    """A split of decoded images (a `Samples`); with `augment_seed`, a batch asked for with an epoch is
    augmented: a crop of the image reflect-padded by 1/8 of its size, flipped horizontally half the time."""

    def __init__(
        self, pixels: torch.Tensor, labels: torch.Tensor, geo: Geometry, augment_seed: int | None = None
    ) -> None:
        self.pixels, self.labels, self.seed = pixels, labels, augment_seed
        self.mean = torch.tensor(geo.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(geo.std).view(1, -1, 1, 1)
        self.pad = max(1, min(geo.height, geo.width) // 8)
        self._drawn: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's (crop offsets (y, x), flip) in `epoch`: a pure function of (seed, epoch, row)."""
        if self._drawn is None or self._drawn[0] != epoch:
            g = torch.Generator().manual_seed(AUGMENT_STREAM + (self.seed or 0) * 1_000_003 + epoch)
            offsets = torch.randint(0, 2 * self.pad + 1, (len(self), 2), generator=g)
            flips = torch.rand(len(self), generator=g) < 0.5
            self._drawn = (epoch, offsets, flips)
        return self._drawn[1], self._drawn[2]

    def _augment(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        offsets, flips = self.draws(epoch)
        height, width, p = x.shape[-2], x.shape[-1], self.pad
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        crops = [padded[i, :, y : y + height, x0 : x0 + width] for i, (y, x0) in enumerate(offsets[idx].tolist())]
        out = torch.stack(crops)
        flip = flips[idx]
        out[flip] = out[flip].flip(-1)
        return out

    def batch(self, indices: list[int], epoch: int | None = None) -> dict[str, torch.Tensor]:
        idx = torch.tensor(indices, dtype=torch.long)
        x = self.pixels[idx].float().div_(255)
        if self.seed is not None and epoch is not None:
            x = self._augment(x, idx, epoch)
        return {"pixel_values": (x - self.mean) / self.std, "labels": self.labels[idx]}


def load(data: TrainerData, geo: Geometry, *, num_labels: int | None, seed: int) -> tuple[Images, Images, Labels, int]:
    """(training split, validation split, labels, number of classes): split as the text tasks split."""
    items, labels = read_images(data)
    count = check_labels(labels, num_labels, data.path)
    trains, evals = split(len(items), seed, data.validation_fraction)
    order = trains + evals
    pixels = torch.empty((len(order), geo.channels, geo.height, geo.width), dtype=torch.uint8)
    for row, i in enumerate(order):  # decoded straight into place: no second copy of the set
        pixels[row] = decode(items[i], geo)
    ids = torch.tensor([labels.ids[i] for i in order], dtype=torch.long)
    n = len(trains)
    train = Images(pixels[:n], ids[:n], geo, augment_seed=seed)
    return train, Images(pixels[n:], ids[n:], geo), labels, count
