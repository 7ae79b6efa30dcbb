"""What every figure shares: file formats, the class palette and names, attack labels, saving.

Importing it selects matplotlib's file backend (Agg): figures are drawn for files,
on machines without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

DPI = 110
PALETTE = sns.color_palette("colorblind", 10)  # colour-blind safe, one colour per class
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "cifar10": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def class_names(dataset: str) -> list[str]:
    """The ten class names of a dataset (digits for the MNIST-style ones)."""
    return CLASS_NAMES.get(dataset, [str(c) for c in range(10)])


def attack_label(attack: str) -> str:
    """'pgd:eps=8/255,alpha=2/255,steps=4' -> 'PGD ε=8/255, α=2/255, 4 steps'."""
    name, _, rest = attack.partition(":")
    fields = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    parts = [f"{symbol}={fields[key]}" for key, symbol in (("eps", "ε"), ("alpha", "α")) if key in fields]
    parts += [f"{fields['steps']} steps"] if "steps" in fields else []
    return f"{name.upper()} " + ", ".join(parts)


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
