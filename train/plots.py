"""PNG figures of a training run (matplotlib's object API: no display, no global backend).

- ``curves.png``: train loss and train/test accuracy per epoch (test-time augmentation
  shown only for a run that used it);
- ``filters.png``: the first convolution's filters (airbench's whitening filters) as RGB tiles;
- ``confusion.png``: the test-set confusion matrix, rows = true class, columns = predicted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def _figure(**kwargs) -> Figure:
    # A bare Figure draws with the Agg canvas on savefig and leaves pyplot's backend (and a
    # notebook's inline plots) alone.
    return Figure(**kwargs)


def plot_curves(
    history: list[dict], path: str | Path, label_smoothing: float = 0.0, tta: bool = True
) -> None:
    """Loss and accuracy per epoch from the ``metrics.jsonl`` records.

    The test accuracy of an epoch is on the ``test_images`` it was measured on (a fixed
    subset of the test set, or all of it); the TTA point appears only for a run with TTA.
    """
    epochs = [h["epoch"] for h in history]
    fig = _figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss = f"CE, labels smoothed by {label_smoothing}" if label_smoothing else "cross entropy"
    ax_loss.set(xlabel="epoch", ylabel=f"loss ({loss})", title="loss")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    sizes = sorted({h.get("test_images") for h in history} - {None})
    for size in sizes or [None]:
        points = [(h["epoch"], 100 * h["test_acc"]) for h in history
                  if h.get("test_images") == size]  # fmt: skip
        label = "test" if size is None else f"test ({size} images)"
        ax_acc.plot(*zip(*points), "o-" if len(points) > 1 else "s", label=label)
    if tta and "test_acc_tta" in history[-1]:
        tta = 100 * history[-1]["test_acc_tta"]
        ax_acc.plot([epochs[-1]], [tta], "*", markersize=12, label=f"test with TTA ({tta:.2f}%)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_filters(weight: np.ndarray, path: str | Path, title: str = "first conv filters") -> None:
    """An image grid of OIHW filters with 3 input channels, each scaled to [0, 1] as RGB."""
    weight = np.asarray(weight, np.float32)
    n = weight.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(1.2 * cols, 1.2 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        f = weight[i]
        if f.shape[0] != 3:  # not RGB: show the mean over input channels in grey
            f = np.repeat(f.mean(0, keepdims=True), 3, axis=0)
        lo, hi = f.min(), f.max()
        ax.imshow(np.transpose((f - lo) / (hi - lo + 1e-12), (1, 2, 0)), interpolation="nearest")
    fig.suptitle(f"{title} {tuple(weight.shape)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm


def plot_confusion(cm: np.ndarray, class_names: list[str], path: str | Path) -> None:
    """The confusion matrix as a heat map with counts written in the cells."""
    fig = _figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"test confusion matrix (accuracy {100 * accuracy:.2f}%)")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        color = "white" if count > threshold else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
