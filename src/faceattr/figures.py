"""The figure plumbing every plot shares: a bare matplotlib Figure on an Agg canvas (no pyplot
global state in library code), written atomically as a PNG, and faces drawn on an axis. The
plots themselves live with the module whose numbers they show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from faceattr.atomic import atomic_path


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """An empty Figure of ``width`` x ``height`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: float = 100, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG (folders made, atomically: never half a file); returns the path.
    ``tight`` crops the canvas to what is drawn (for figures without a layout engine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return path


def show_image(ax, image: np.ndarray, title: str = "", fontsize: float = 7, frame: bool = False) -> None:
    """Draw a uint8 face (H, W), (H, W, 1) or (H, W, 3) at its true grey levels, titled; without
    ticks, and without the frame unless ``frame`` (to colour its spines)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    if title:
        ax.set_title(title, fontsize=fontsize)
    if frame:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.axis("off")
