"""Feature visualisation by activation maximisation (Olah et al. 2017, Lucid), jitted.

An image is optimised so that one channel of one layer responds as strongly as possible, as
Gonthier et al. 2020 do to compare a network's filters before and after fine-tuning.

Parameterisation (Lucid's ``fft_image`` + ``to_valid_rgb``):

- the free parameters are the real and imaginary parts of the ``rfft2`` coefficients
  ``(2, channels, size, size // 2 + 1)``, drawn ``N(0, 0.01)`` from a fixed seed;
- each coefficient is scaled by ``1 / max(|f|, 1 / size) ** decay_power`` (``decay_power`` 1:
  a ``1/f`` spectrum, like natural images) and ``size``, inverse-transformed and divided by 4;
- RGB images (``channels_in=3``) are colour-decorrelated: each pixel ``v`` becomes
  ``v @ COLOR_MATRIX.T``, Lucid's square root of the ImageNet colour correlation
  (`COLOR_CORRELATION_SVD_SQRT`) divided by its largest column norm. Grey images
  (``channels_in=1``) have one channel and no decorrelation;
- a sigmoid maps the result to ``[0, 1]``; the caller's ``preprocess`` then maps ``[0, 1]`` to
  the model's input range (a name of `transfusion_jax.data.NORMALIZATIONS`, applied to
  ``255 x``, or any function).

Each step draws fresh transforms from the step's key (`Transforms`, Lucid's
``standard_transforms``): jitter, scale, rotation, jitter again, composed into one bilinear
resample of the same size; samples that fall outside the image read ``pad_value`` (0.5, the
constant Lucid pads with), so padding and the crop back are implicit.

Objective: the spatial mean of ``out[layer][..., channel]``, the tensor exactly as the model's
``out`` holds it. That is post-ReLU (and post max-pool) for the CBR blocks, the linear output of
the last MBConv (BatchNorm + skip, no activation) for EfficientNet-Lite ``block*``, and
post-ReLU6 for its ``stem``/``conv_head``. A post-ReLU channel that is zero everywhere on the
grey start image has zero gradient and stays put (as in Lucid).

Adam (optax) runs the whole optimisation as one jitted ``lax.scan``; one channel's run is
vmapped over the channels (each channel's seed is ``fold_in(seed, channel)``, so a channel's
result does not depend on which others share the call) and, with ``stacked=True``, over
checkpoints (same seeds for every checkpoint: "before vs after" start from the same image).

Sizes for real runs: ImageNet models at their native size (224 px for EfficientNet-Lite0,
ResNet, GoogLeNet) with ``steps=2048``, ``lr=0.05`` and the default transforms (Gonthier et
al.); 256 steps at 128 px already give clear textures for EfficientNet-Lite0 ``block4`` (about
0.05 s per channel and step on two CPU cores). Small models (MNIST-size CBR): 28-64 px,
256-512 steps, ``Transforms(jitter=1, jitter2=1)``. CPU tests use 32 px and a few dozen steps.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from transfusion_jax.outputs import save_figure

logger = logging.getLogger(__name__)

# Lucid's square root of the ImageNet colour correlation matrix (``color_correlation_svd_sqrt``).
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]], np.float32)
# What is applied: the matrix divided by its largest column norm (Lucid's ``_normalized``).
COLOR_MATRIX = COLOR_CORRELATION_SVD_SQRT / np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0).max()


@dataclasses.dataclass(frozen=True)
class Transforms:
    """Random transforms drawn every step. The defaults are Lucid's ``standard_transforms``
    (its ``jitter(8)`` / ``jitter(4)`` random crops shift by 0-8 / 0-4 px, the same 9 / 5
    shifts as +-4 / +-2 here).

    Attributes:
      jitter: first translation, a uniform integer in ``[-jitter, jitter]`` pixels per axis.
      scale: range of the uniform isotropic scale factor.
      degrees: rotation, uniform in ``[-degrees, degrees]``.
      jitter2: second translation, in ``[-jitter2, jitter2]`` pixels per axis.
      pad_value: value read outside the image (in ``[0, 1]``, before ``preprocess``).
    """

    jitter: int = 4
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0
    jitter2: int = 2
    pad_value: float = 0.5


class FeatureVis(NamedTuple):
    """Result of `visualize_channels` (``C``: checkpoints, only when ``stacked``).

    Attributes:
      images: ``([C,] n_channels, size, size, channels_in)`` float32 in ``[0, 1]``.
      trace: ``([C,] n_channels, steps)`` the objective at each step (on that step's
        transformed image, before the step's update).
    """

    images: np.ndarray
    trace: np.ndarray


def objective_gain(trace: np.ndarray, *, rtol: float = 1e-3,
                   atol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """How much each visualisation raised its objective, and which stayed flat.

    Args:
      trace: ``(..., steps)`` objective per step (`FeatureVis.trace`).
      rtol: a gain within ``rtol`` of the objective's size counts as none.
      atol: a gain below this counts as none (e.g. a dead channel: 0 throughout).

    Returns:
      ``(gain, flat)``, each ``(...)``: mean objective over the last tenth of the steps
      minus that over the first tenth, and whether that gain is nil (the image is not a
      visualisation of anything the channel responds to).
    """
    trace = np.asarray(trace, np.float64)
    k = max(1, trace.shape[-1] // 10)
    start, end = trace[..., :k].mean(-1), trace[..., -k:].mean(-1)
    gain = end - start
    flat = ~(gain > atol + rtol * np.maximum(np.abs(start), np.abs(end)))
    return gain, flat


def fourier_frequencies(size: int) -> np.ndarray:
    """``|f|`` of the ``rfft2`` coefficients of a ``size x size`` image: ``(size, size//2+1)``."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return np.sqrt(fx * fx + fy * fy).astype(np.float32)


def init_spectrum(key: jax.Array, size: int, channels: int, sd: float = 0.01) -> jax.Array:
    """Random parameters ``(2, channels, size, size // 2 + 1)``: real and imaginary parts."""
    return sd * jax.random.normal(key, (2, channels, size, size // 2 + 1), jnp.float32)


def spectrum_to_image(spectrum: jax.Array, decay_power: float = 1.0) -> jax.Array:
    """Unbounded image ``(size, size, channels)`` from parameters ``(2, channels, size, wf)``."""
    size = spectrum.shape[2]
    scale = size / np.maximum(fourier_frequencies(size), 1.0 / size) ** decay_power
    coeffs = (spectrum[0] + 1j * spectrum[1]) * scale
    image = jnp.fft.irfft2(coeffs, s=(size, size))  # (channels, size, size)
    return jnp.moveaxis(image, 0, -1) / 4.0


def decorrelate_colors(image: jax.Array) -> jax.Array:
    """Each RGB pixel ``v`` of ``(..., 3)`` becomes ``v @ COLOR_MATRIX.T``."""
    return image @ jnp.asarray(COLOR_MATRIX).T


def to_valid_image(spectrum: jax.Array, decay_power: float = 1.0) -> jax.Array:
    """Parameters ``(2, c, size, wf)`` -> image ``(size, size, c)`` in ``[0, 1]`` (c = 1 or 3)."""
    image = spectrum_to_image(spectrum, decay_power)
    if image.shape[-1] == 3:
        image = decorrelate_colors(image)
    return jax.nn.sigmoid(image)


def random_transform(image: jax.Array, key: jax.Array, transforms: Transforms) -> jax.Array:
    """Jitter, scale, rotate (about the centre), jitter: ``(h, w, c) -> (h, w, c)``, bilinear."""
    h, w, _ = image.shape
    u = jax.random.uniform(key, (6,))  # one draw for all six numbers (cheap to compile)
    t1 = jnp.floor(u[0:2] * (2 * transforms.jitter + 1)) - transforms.jitter
    t2 = jnp.floor(u[2:4] * (2 * transforms.jitter2 + 1)) - transforms.jitter2
    lo, hi = transforms.scale
    s = lo + (hi - lo) * u[4]
    theta = jnp.deg2rad(transforms.degrees * (2 * u[5] - 1))
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    # Content at x lands at y = centre + t2 + s R (x + t1 - centre); sample x for each output y.
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    y = jnp.stack([rows, cols]).astype(jnp.float32) - (centre + t2)[:, None, None]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src = jnp.stack([cos * y[0] + sin * y[1], -sin * y[0] + cos * y[1]]) / s
    src = src + (centre - t1)[:, None, None]

    return bilinear_sample(image, src[0], src[1], transforms.pad_value)


def bilinear_sample(image: jax.Array, rows: jax.Array, cols: jax.Array,
                    fill: float) -> jax.Array:
    """``image`` ``(h, w, c)`` read at float positions ``rows``, ``cols`` ``(H, W)``, bilinear;
    positions outside the image read ``fill``. Returns ``(H, W, c)``."""
    h, w, c = image.shape
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), constant_values=fill).reshape(-1, c)
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    dr, dc = (rows - r0)[..., None], (cols - c0)[..., None]

    def read(r, q):  # indices beyond the border all land on the one-pixel fill frame
        r = jnp.clip(r, -1, h).astype(jnp.int32) + 1
        q = jnp.clip(q, -1, w).astype(jnp.int32) + 1
        return jnp.take(padded, r * (w + 2) + q, axis=0)

    top = read(r0, c0) * (1 - dc) + read(r0, c0 + 1) * dc
    bottom = read(r0 + 1, c0) * (1 - dc) + read(r0 + 1, c0 + 1) * dc
    return top * (1 - dr) + bottom * dr


def _preprocess_fn(preprocess: Callable[[jax.Array], jax.Array] | str | None
                   ) -> Callable[[jax.Array], jax.Array]:
    if preprocess is None:
        return lambda x: x
    if callable(preprocess):
        return preprocess
    from transfusion_jax.data.preprocess import NORMALIZATIONS

    if preprocess not in NORMALIZATIONS:
        raise ValueError(f"unknown preprocess {preprocess!r}; valid: {', '.join(NORMALIZATIONS)} "
                         "or a function of images in [0, 1]")
    offset, scale = (jnp.asarray(v, jnp.float32) for v in NORMALIZATIONS[preprocess])
    return lambda x: (x * 255.0 - offset) / scale


@functools.lru_cache(maxsize=16)
def _compiled(model: nn.Module, layer: str, size: int, steps: int, lr: float, channels_in: int,
              preprocess: Any, transforms: Transforms, decay_power: float, stacked: bool):
    """The jitted ``(variables, channels (k,), seed) -> (images, trace)``."""
    to_input = _preprocess_fn(preprocess)
    optimizer = optax.adam(lr)

    def activation(spectrum, variables, channel, key):
        image = random_transform(to_valid_image(spectrum, decay_power), key, transforms)
        _, out = model.apply(variables, to_input(image)[None], train=False)
        return jnp.take(out[layer][0], channel, axis=-1).mean()

    def one_channel(variables, channel, seed):
        init_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), channel))
        spectrum = init_spectrum(init_key, size, channels_in)

        def step(carry, i):
            spectrum, opt_state = carry
            value, grad = jax.value_and_grad(activation)(spectrum, variables, channel,
                                                         jax.random.fold_in(step_key, i))
            updates, opt_state = optimizer.update(-grad, opt_state, spectrum)  # maximise
            return (optax.apply_updates(spectrum, updates), opt_state), value

        (spectrum, _), trace = jax.lax.scan(step, (spectrum, optimizer.init(spectrum)),
                                            jnp.arange(steps))
        return to_valid_image(spectrum, decay_power), trace

    fn = jax.vmap(one_channel, in_axes=(None, 0, None))
    if stacked:
        fn = jax.vmap(fn, in_axes=(0, None, None))
    return jax.jit(fn)


def visualize_channels(model: nn.Module, variables: Any, layer: str, channels: Sequence[int], *,
                       size: int = 64, steps: int = 256, lr: float = 0.05, seed: int = 0,
                       channels_in: int = 3,
                       preprocess: Callable[[jax.Array], jax.Array] | str | None = None,
                       stacked: bool = False, transforms: Transforms = Transforms(),
                       decay_power: float = 1.0) -> FeatureVis:
    """Images that maximise the mean activation of ``channels`` of ``layer``, in one call.

    Args:
      model: a model of the zoo (``model.apply(variables, x, train=False) -> (logits, out)``).
      variables: its variables, or with ``stacked`` a pytree whose leaves have a leading
        checkpoint axis ``C`` (e.g. before and after fine-tuning).
      layer: a key of ``out`` (e.g. ``"block3"``); its last axis indexes channels.
      channels: channel indices of ``layer`` to visualise.
      size: image side in pixels (the model sees ``(1, size, size, channels_in)``).
      steps: Adam steps.
      lr: Adam learning rate on the Fourier parameters.
      seed: base seed; channel ``c`` uses ``fold_in(key(seed), c)``.
      channels_in: 3 (RGB, colour-decorrelated) or 1 (grey).
      preprocess: maps images in ``[0, 1]`` to the model's input: None (identity, e.g. models
        trained with ``zero_one``), a name of ``NORMALIZATIONS`` (``"efficientnet"``:
        ``(255 x - 127) / 128``), or a function (pass the same object to reuse the compilation).
      stacked: vmap over the leading axis of ``variables``.
      transforms: the random transforms of every step.
      decay_power: exponent of the ``1 / f`` scaling of the Fourier parameters.

    Returns:
      `FeatureVis`: ``images`` ``([C,] n_channels, size, size, channels_in)`` in ``[0, 1]`` and
      ``trace`` ``([C,] n_channels, steps)``.
    """
    if channels_in not in (1, 3):
        raise ValueError(f"channels_in must be 1 (grey) or 3 (RGB), got {channels_in}")
    first = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                         variables) if stacked else variables
    _, shapes = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, size, size, channels_in)), train=False), first)
    if layer not in shapes:
        raise ValueError(f"layer {layer!r} is not in the model's out; valid: {', '.join(shapes)}")
    width = shapes[layer].shape[-1]
    bad = [c for c in channels if not 0 <= c < width]
    if bad:
        raise ValueError(f"channels {bad} out of range for {layer!r} with {width} channels")
    fn = _compiled(model, layer, size, steps, float(lr), channels_in, preprocess, transforms,
                   float(decay_power), stacked)
    start = time.perf_counter()
    images, trace = jax.device_get(fn(variables, jnp.asarray(channels, jnp.int32), seed))
    logger.info("feature vis of %s channels %s: %d steps at %d px in %.1f s", layer,
                list(channels), steps, size, time.perf_counter() - start)
    return FeatureVis(np.asarray(images), np.asarray(trace))


def plot_feature_vis(images: np.ndarray, path: str | Path, row_labels: Sequence[str] = (),
                     col_labels: Sequence[str] = (), title: str = "") -> str:
    """Saves a grid of visualisations as a PNG.

    Args:
      images: ``(rows, cols, h, w, c)`` (e.g. checkpoints x channels) or ``(cols, h, w, c)``,
        values in ``[0, 1]``, ``c`` 1 or 3.
      path: the PNG to write (folders are created).
      row_labels: one label per row (e.g. "before", "after"), or empty.
      col_labels: one label per column (e.g. "block4:12"), or empty.
      title: figure title.

    Returns:
      The path written.
    """
    from transfusion_jax.outputs import plt

    images = np.asarray(images)
    if images.ndim == 4:
        images = images[None]
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols + 0.6, 1.8 * rows + 0.4),
                             squeeze=False, constrained_layout=True)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            image = np.clip(images[r, c], 0.0, 1.0)
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0,
                      vmax=1)  # the colour map only applies to grey images
            ax.set(xticks=[], yticks=[])
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return str(save_figure(fig, path))
