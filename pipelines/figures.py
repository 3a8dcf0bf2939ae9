"""Pictures people look at: sample grids, interpolation strips, loss and quality curves.

Each returns a matplotlib ``Figure`` (MLflow logs it with ``log_figure``); ``save_png`` writes
one atomically for DVC's image plots (DVC's HTML plots need a CDN, PNGs render offline).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from pipelines.atomic import atomic_path


def _tile(images: np.ndarray, cols: int) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> one ``(rows*H, cols*W[, C])`` mosaic with 1-px gaps."""
    n, c, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), dtype=np.float32)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = (
            im.transpose(1, 2, 0)
        )
    return canvas[..., 0] if c == 1 else canvas


def samples(x: np.ndarray, *, reference: np.ndarray | None = None, title: str = "") -> Figure:
    """A grid of image samples, or a scatter of 2-D samples over the reference data."""
    if x.ndim == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        if reference is not None:
            ax.scatter(*reference[:2000].T, s=2, c="0.75", label="data")
        ax.scatter(*x[:2000].T, s=2, c="C0", label="one-step samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
    else:
        imgs = np.clip(x.reshape(len(x), *_image_shape(x)), 0, 1)
        cols = math.ceil(math.sqrt(len(imgs)))
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(_tile(imgs, cols), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _image_shape(x: np.ndarray) -> tuple[int, int, int]:
    if x.ndim == 4:
        return x.shape[1:]
    if x.ndim == 3:
        return (1, *x.shape[1:])
    side = math.isqrt(x.shape[1])
    return (1, side, side) if side * side == x.shape[1] else (1, 1, x.shape[1])


def interpolation(path: np.ndarray, title: str = "") -> Figure:
    """``(steps, pairs, ...)`` samples: one row per pair, one column per interpolation weight."""
    steps, pairs = path.shape[:2]
    if path.ndim == 3 and path.shape[2] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        for p in range(pairs):
            ax.plot(path[:, p, 0], path[:, p, 1], "-o", ms=2)
        ax.set_aspect("equal")
    else:
        flat = path.transpose(1, 0, *range(2, path.ndim)).reshape(steps * pairs, *path.shape[2:])
        imgs = np.clip(flat.reshape(len(flat), *_image_shape(flat)), 0, 1)
        fig, ax = plt.subplots(figsize=(steps * 0.6, pairs * 0.6 + 0.4))
        ax.imshow(_tile(imgs, steps), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def labelled_rows(
    rows: np.ndarray, *, row_labels: list[str], col_labels: list[str], title: str = ""
) -> Figure:
    """``(R, C, ...)`` samples as a grid with its labels where they are: one row per row label,
    one column per column label. 2-D points are drawn as a path per row instead."""
    r, c = rows.shape[:2]
    if rows.ndim == 3 and rows.shape[2] == 2:
        return interpolation(rows.transpose(1, 0, 2), title=title)
    flat = rows.reshape(r * c, *rows.shape[2:])
    imgs = np.clip(flat.reshape(len(flat), *_image_shape(flat)), 0, 1)
    h, w = imgs.shape[2:]
    fig, ax = plt.subplots(figsize=(c * 0.7 + 1.4, r * 0.7 + 0.8))
    ax.imshow(_tile(imgs, c), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([1 + j * (w + 1) + (w - 1) / 2 for j in range(c)], col_labels, fontsize=7)
    ax.set_yticks([1 + i * (h + 1) + (h - 1) / 2 for i in range(r)], row_labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def curves(
    x: list[float],
    ys: dict[str, list[float]],
    *,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    title: str = "",
) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, y in ys.items():
        ax.plot(x, y, "-o", ms=3, label=name)
    if log_x:
        ax.set_xscale("log")
    return _finish(fig, ax, xlabel, ylabel, title)


def _finish(fig: Figure, ax: plt.Axes, xlabel: str, ylabel: str, title: str) -> Figure:
    """Labels, title, legend and grid: the shared look of the line and scatter charts."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def note(text: str) -> Figure:
    """A figure that says why there is no picture (a DVC plot must exist on every run)."""
    fig, ax = plt.subplots(figsize=(5, 1))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True)
    ax.axis("off")
    return fig


def save_png(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def pareto(
    x: list[float],
    y: list[float],
    front: list[bool],
    *,
    xlabel: str,
    ylabel: str,
    labels: list[str] | None = None,
    title: str = "",
) -> Figure:
    """Every trial as a point, the non-dominated ones joined into the Pareto front."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    on = np.asarray(front, dtype=bool)
    ax.scatter(xs[~on], ys[~on], c="0.6", s=18, label="trial")
    order = np.argsort(xs[on])
    ax.plot(xs[on][order], ys[on][order], "-o", c="C3", ms=5, label="Pareto front")
    for i, text in enumerate(labels or []):
        ax.annotate(text, (xs[i], ys[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    return _finish(fig, ax, xlabel, ylabel, title)


def projection_arrows(
    inputs: np.ndarray,
    projected: np.ndarray,
    data: np.ndarray,
    samples: np.ndarray,
    *,
    title: str = "",
) -> Figure:
    """2-D projector: data (grey), inputs joined to where ``f`` sends them, and ``f(noise)``."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax in axes:
        ax.scatter(*data[:2000].T, s=2, c="0.75", label="held-out data")
    for a, b in zip(inputs, projected, strict=True):
        axes[0].plot([a[0], b[0]], [a[1], b[1]], c="C0", lw=0.4, alpha=0.5)
    axes[0].scatter(*projected.T, s=5, c="C3", label="f(input)")
    axes[0].set_title("inputs -> f(inputs)", fontsize=9)
    axes[1].scatter(*samples[:2000].T, s=2, c="C3", label="f(noise)")
    axes[1].set_title("f(noise)", fontsize=9)
    lim = np.abs(data).max() * 1.5
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
