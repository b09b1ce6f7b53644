"""Per-example preprocessing on the host (NumPy), run inside the grain pipeline.

Every function takes and returns one image ``(h, w, c)``; they are composed by
`make_preprocess` from the ``config.data`` options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from transfusion_jax.data.errors import DataError

# name -> (offset, scale) applied as (x - offset) / scale to pixel values in [0, 255].
NORMALIZATIONS: dict[str, tuple[Any, Any]] = {
    "zero_one": (0.0, 255.0),
    "minus_one_one": (127.5, 127.5),
    "efficientnet": (127.0, 128.0),  # EfficientNet-Lite: (x - 127) / 128
    "imagenet": (np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255),
}


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes a uint8 image ``(h, w, c)`` to ``(size, size, c)`` (bilinear, whole image)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out[..., None] if channels == 1 else out


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> RGB by repetition, RGB -> grey by luminance, or unchanged."""
    if image.ndim == 2:
        image = image[..., None]
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if have == 3 and channels == 1:
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.round(grey).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert an image with {have} channels to {channels}")


def normalize(image: np.ndarray, how: str) -> np.ndarray:
    """uint8 -> float32 by one of `NORMALIZATIONS`, in float32 throughout (the per-channel
    ImageNet constants in float64 made every pixel take a float64 round trip: a third of the
    per-image cost of a 224x224 pipeline, `benchmarks/input_pipeline.py`)."""
    offset, scale = NORMALIZATIONS[how]
    return (image.astype(np.float32) - np.float32(offset)) / np.float32(scale)


def random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Pads by ``padding`` (reflect) and crops back to the original size at a random place."""
    if padding <= 0:
        return image
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top: top + h, left: left + w]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def make_preprocess(data_config: Any) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
    """The deterministic part: resize, channel conversion, normalisation.

    Returns:
      A function of a record ``{"image": uint8 (h, w, c), "label"}`` returning
      ``{"image": float32 (s, s, channels), "label"}``.
    """
    if data_config.normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalization {data_config.normalize!r}; valid: "
                         f"{', '.join(NORMALIZATIONS)}")

    def preprocess(record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"image": normalize(fixed_size(record["image"], data_config),
                                   data_config.normalize),
                "label": record["label"]}

    return preprocess


def fixed_size(image: np.ndarray, data_config: Any) -> np.ndarray:
    """The uint8 part of `make_preprocess`: ``data.channels`` channels, resized to
    ``data.image_size``; ``(s, s, channels)``."""
    return resize(to_channels(np.asarray(image), data_config.channels), data_config.image_size)


def make_augment(data_config: Any) -> Callable[[dict[str, Any], np.random.Generator], dict]:
    """The random part (train only): crop and flip, seeded per example by grain."""
    aug = data_config.augment

    def augment(record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = random_crop(record["image"], aug.crop_padding, rng)
        if aug.flip:
            image = random_flip(image, rng)
        return {"image": np.ascontiguousarray(image), "label": record["label"]}

    return augment
