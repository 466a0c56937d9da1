"""Pictures of a tiled layer's filters (paper Fig. 6B, C): one row per filter, one column per
tile, so that the replicas of a filter sit side by side."""
from __future__ import annotations

from torch import Tensor

from ..errors import RapaError


def filter_images(weight: Tensor, filters: list[int]) -> Tensor:
    """(F, T, kh, kw, 3) RGB images in [0, 1] of the chosen filters of replicas (T, O, C, kh,
    kw): a filter of 3 input channels in colour (as Caffe's RGB-ordered images), otherwise the
    mean over its input channels in gray. One scale per row: each row's largest |value| maps
    to the ends of [0, 1], 0 to mid-gray."""
    t, o, c = weight.shape[:3]
    bad = [f for f in filters if not 0 <= f < o]
    if bad:
        raise RapaError(f"filter {bad[0]} does not exist: the layer has {o} filters (0 to "
                        f"{o - 1})")
    w = weight.detach().double()[:, filters]                 # (T, F, C, kh, kw)
    img = w if c == 3 else w.mean(2, keepdim=True).expand(-1, -1, 3, -1, -1)
    img = img.permute(1, 0, 3, 4, 2)                         # (F, T, kh, kw, 3)
    scale = img.abs().flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1, 1, 1)
    return (img / scale + 1) / 2


def draw_filters(weight: Tensor, filters: list[int], path: str, title: str = "") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RapaError("rapa filters needs matplotlib (pip install matplotlib)") from None
    images = filter_images(weight, filters).numpy()
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(0.6 * cols + 1, 0.6 * rows + 0.6),
                             squeeze=False)
    for r in range(rows):
        for k in range(cols):
            ax = axes[r][k]
            ax.imshow(images[r, k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(str(filters[r]), rotation=0, ha="right", va="center", fontsize=7)
            if r == 0:
                ax.set_title(str(k), fontsize=7)
    fig.suptitle(title or "filters (rows) by tile (columns)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
