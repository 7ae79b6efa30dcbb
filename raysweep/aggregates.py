"""Aggregate spreads from per-pair packets (paper Eq. 23): the one place this formula lives.

For each class Y over the sampled dimensions i:
    ΔX_Y = (Σ_i sx_i)^(1/2),   ΔP_Y = (Σ_i sp_i)^(1/2).
MNIST-style figures use class 8, CIFAR-10 the mean over classes (SPEC 1.4).
Pairs without a packet (a feature constant over the training set, a = b, NaN)
are left out of the sums and counted in `missing`.
"""

from __future__ import annotations

import pandas as pd

KEYS = ["trial", "epoch", "space"]


def spreads(packets: pd.DataFrame) -> pd.DataFrame:
    """ΔX_Y, ΔP_Y per (trial, epoch, space, class), with the number of dims summed and missing."""
    grouped = packets.groupby(KEYS + ["class"], sort=True)
    out = grouped.agg(
        DX=("sx", lambda s: s.sum(skipna=True) ** 0.5),
        DP=("sp", lambda s: s.sum(skipna=True) ** 0.5),
        dims=("sx", "count"),
        missing=("sx", lambda s: int(s.isna().sum())),
    )
    return out.reset_index()


def headline(packets: pd.DataFrame, label: int = 8) -> pd.DataFrame:
    """Per (trial, epoch, space): ΔX, ΔP of class `label` and the mean over classes."""
    per_class = spreads(packets)
    chosen = per_class[per_class["class"] == label].set_index(KEYS)[["DX", "DP"]].add_suffix(f"_class{label}")
    mean = per_class.groupby(KEYS)[["DX", "DP"]].mean().add_suffix("_mean")
    return chosen.join(mean, how="outer").reset_index()
