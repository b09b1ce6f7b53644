"""A small ImageNet-like tfds dataset (array_record) made offline from scikit-image's photos.

Two forms of the same examples, so that the cost of decoding can be told apart:

- ``jpeg``: JPEG-encoded (quality 90) random crops of 256-512 pixels a side (ImageNet's
  images average about 400x350), decoded by tfds (PIL) when read;
- ``decoded``: the same images decoded once and resized to the training resolution, stored
  raw as ``uint8 (size, size, 3)``: reading one is a copy.

Each is a tfds ``GeneratorBasedBuilder`` prepared as array_record and read through
``as_data_source`` like any other tfds dataset; its records are ``{"image": uint8 (h, w, 3),
"label": int}``, what `transfusion_jax.data.train_dataset` takes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "retina", "rocket", "hubble_deep_field",
          "immunohistochemistry", "colorwheel")
NUM_CLASSES = 10


def _crops(num_examples: int, seed: int = 0):
    """``(image uint8 (h, w, 3), label)``: random crops of the photos, 256-512 px a side."""
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for i in range(num_examples):
        photo = photos[i % len(photos)]
        h, w = rng.integers(256, 513, size=2)
        scale = max(h / photo.shape[0], w / photo.shape[1], 1.0)
        if scale > 1:  # upscale small photos so that the crop fits
            size = (int(np.ceil(photo.shape[1] * scale)), int(np.ceil(photo.shape[0] * scale)))
            photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
        top = rng.integers(0, photo.shape[0] - h + 1)
        left = rng.integers(0, photo.shape[1] - w + 1)
        yield photo[top: top + h, left: left + w], i % NUM_CLASSES


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class Photos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-image photos as JPEG (``jpeg_N``) or decoded at a resolution
    (``decodedS_N``); N examples in the ``train`` split."""

    name = "photos_bench"
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, kind: str, num_examples: int, size: int = 224, **kwargs: Any):
        if kind not in ("jpeg", "decoded"):
            raise ValueError(f"kind must be 'jpeg' or 'decoded', got {kind!r}")
        self._kind, self._num, self._size = kind, num_examples, size
        name = f"jpeg_{num_examples}" if kind == "jpeg" else f"decoded{size}_{num_examples}"
        super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        if self._kind == "jpeg":
            image = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
        else:
            image = tfds.features.Tensor(shape=(self._size, self._size, 3), dtype=np.uint8)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": image, "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}))

    def _split_generators(self, dl_manager):
        del dl_manager  # everything comes from the installed scikit-image
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (image, label) in enumerate(_crops(self._num)):
            if self._kind == "jpeg":
                yield i, {"image": _jpeg(image), "label": label}
            else:  # decode (the JPEG round trip, as a real dataset would be) and resize once
                decoded = np.asarray(Image.open(io.BytesIO(_jpeg(image))).convert("RGB"))
                resized = Image.fromarray(decoded).resize((self._size, self._size),
                                                         Image.BILINEAR)
                yield i, {"image": np.asarray(resized), "label": label}


def photos_source(data_dir: str | Path, kind: str, num_examples: int, size: int = 224):
    """The ``train`` split as a random-access source, prepared on first use (seconds).

    Returns:
      A tfds data source of ``{"image": uint8 (h, w, 3), "label": int}`` records.
    """
    tfds.disable_progress_bar()
    builder = Photos(kind=kind, num_examples=num_examples, size=size, data_dir=str(data_dir),
                     file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()
    return builder.as_data_source(split="train")
