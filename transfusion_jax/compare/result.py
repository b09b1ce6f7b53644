"""`SimilarityMatrix`: a layer x layer similarity of two models, labelled, with a heatmap."""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Any

import numpy as np

LABELS = {"linear_cka": "linear CKA", "rbf_cka": "RBF CKA", "cca": "CCA (mean)",
          "svcca": "SVCCA (mean)", "pwcca": "PWCCA"}


@dataclasses.dataclass(frozen=True, eq=False)
class SimilarityMatrix:
    """Similarity of every layer of model A (rows) to every layer of model B (columns).

    Attributes:
      values: ``(L_a, L_b)`` float array; ``values[i, j]`` compares ``layers_a[i]`` of model A
        with ``layers_b[j]`` of model B.
      layers_a: row labels, model A's layers in the order given.
      layers_b: column labels, model B's layers in the order given.
      method: ``'linear_cka'``, ``'rbf_cka'``, ``'cca'``, ``'svcca'`` or ``'pwcca'``.
      estimator: ``'full'`` (exact on all examples) or ``'minibatch'`` (Nguyen et al. 2021).
      debiased: whether HSIC was the unbiased estimator (always, for ``'minibatch'``).
      reduction: how conv maps became representations (``'mean_pool'``, ...).
      num_examples: examples (model inputs) compared.
      names: ``(model A, model B)`` display names.
    """

    values: np.ndarray
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    method: str
    estimator: str
    debiased: bool
    reduction: str
    num_examples: int
    names: tuple[str, str] = ("model A", "model B")

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def label(self) -> str:
        """E.g. ``'linear CKA (biased, full data)'``."""
        label = LABELS.get(self.method, self.method)
        if self.method.endswith("cka"):
            if self.estimator == "minibatch":
                return f"{label} (minibatch, unbiased HSIC)"
            return f"{label} ({'debiased' if self.debiased else 'biased'}, full data)"
        return f"{label} (full data)"

    def __getitem__(self, key: str | tuple[str, str]) -> Any:
        """``m["layer1", "layer3"]``: one value (A's layer1 vs B's layer3);
        ``m["layer1"]``: A's layer1 against every layer of B, ``{layer of B: value}``.

        Raises:
          KeyError: a name that is not a row (or column) label.
        """
        if isinstance(key, tuple):
            a, b = key
            return float(self.values[self._index(self.layers_a, a, 0),
                                     self._index(self.layers_b, b, 1)])
        row = self.values[self._index(self.layers_a, key, 0)]
        return dict(zip(self.layers_b, map(float, row), strict=True))

    def _index(self, layers: tuple[str, ...], name: str, axis: int) -> int:
        if name not in layers:
            raise KeyError(f"{name!r} is not a layer of {self.names[axis]}; its layers: "
                           f"{list(layers)}.")
        return layers.index(name)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{layer of A: {layer of B: value}}``."""
        return {a: self[a] for a in self.layers_a}

    def to_csv(self, path: Any = None) -> str:
        """The matrix as CSV (a header row of B's layers, one row per layer of A).

        Args:
          path: where to write it (a local or ``gs://`` path); ``None`` only returns it.

        Returns:
          The CSV text.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([f"{self.names[0]} \\ {self.names[1]}", *self.layers_b])
        for a, row in zip(self.layers_a, self.values, strict=True):
            writer.writerow([a, *(f"{v:.8g}" for v in row)])
        text = buffer.getvalue()
        if path is not None:
            from etils import epath

            epath.Path(path).write_text(text)
        return text

    def __repr__(self) -> str:
        width = max(8, *map(len, self.layers_b))
        first = max(map(len, self.layers_a))
        lines = [f"SimilarityMatrix({self.label}, {self.reduction}, {self.num_examples} "
                 f"examples; rows: {self.names[0]}, columns: {self.names[1]})",
                 " " * first + "".join(f"  {b:>{width}}" for b in self.layers_b)]
        for a, row in zip(self.layers_a, self.values, strict=True):
            lines.append(f"{a:<{first}}" + "".join(f"  {v:>{width}.4f}" for v in row))
        return "\n".join(lines)

    def plot(self, ax: Any = None, *, annotate: bool = True, cmap: str = "magma",
             vmin: float = 0.0, vmax: float = 1.0):
        """A heatmap: rows are model A's layers (top to bottom), columns model B's.

        Args:
          ax: a matplotlib ``Axes`` to draw into; ``None`` makes a new figure (not registered
            with ``pyplot``: it shows as a notebook cell's value, ``fig.savefig`` writes it).
          annotate: write each value in its cell.
          cmap, vmin, vmax: colour map and its range.

        Returns:
          The matplotlib ``Figure``.
        """
        if ax is None:
            from matplotlib.figure import Figure

            la, lb = self.shape
            fig = Figure(figsize=(max(4.0, 2.2 + 0.7 * lb), max(3.0, 1.6 + 0.5 * la)),
                         layout="constrained")
            ax = fig.add_subplot()
        image = ax.imshow(self.values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(self.layers_b)), self.layers_b, rotation=45, ha="right")
        ax.set_yticks(range(len(self.layers_a)), self.layers_a)
        ax.set_xlabel(f"{self.names[1]} (columns)")
        ax.set_ylabel(f"{self.names[0]} (rows)")
        ax.set_title(f"{self.label}, {self.reduction}, n = {self.num_examples}\n"
                     f"rows: {self.names[0]}, columns: {self.names[1]}", fontsize=9)
        if annotate:
            middle = (vmin + vmax) / 2
            for (i, j), value in np.ndenumerate(self.values):
                ax.text(j, i, "nan" if np.isnan(value) else f"{value:.2f}", ha="center",
                        va="center", fontsize=8, color="white" if value < middle else "black")
        ax.figure.colorbar(image, ax=ax, shrink=0.9)
        return ax.figure
