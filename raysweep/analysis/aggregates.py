"""Aggregate spreads from per-pair packets (paper Eq. 23), and the headline class: the one place of each.

For each class Y over the sampled dimensions i:
    ΔX_Y = (Σ_i sx_i)^(1/2),   ΔP_Y = (Σ_i sp_i)^(1/2).
The headline (SPEC 1.4): the mean over classes on CIFAR-10, class 8 elsewhere
(the paper's MNIST figures). Pairs without a packet (a feature constant over the
training set, a = b, null) are left out of the sums and counted in `missing`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["trial", "epoch", "space"]
HEADLINE_CLASS = 8  # the paper's MNIST class (Fig. 1 C, D and Fig. 2)
MEAN_DATASETS = ("cifar10",)  # datasets whose headline is the mean over classes


def headline_label(dataset: str) -> str:
    """What the headline ΔX, ΔP of a dataset are: 'class 8' or 'mean over classes'."""
    return "mean over classes" if dataset in MEAN_DATASETS else f"class {HEADLINE_CLASS}"


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


def headline(packets: pd.DataFrame) -> pd.DataFrame:
    """Per (trial, epoch, space): the headline ΔX, ΔP with its `label`, and both candidates
    (`DX_class8`, `DP_class8`, `DX_mean`, `DP_mean`). `packets` needs a `dataset` column."""
    per_class = spreads(packets)
    label = f"_class{HEADLINE_CLASS}"
    chosen = per_class[per_class["class"] == HEADLINE_CLASS].set_index(KEYS)[["DX", "DP"]].add_suffix(label)
    mean = per_class.groupby(KEYS)[["DX", "DP"]].mean().add_suffix("_mean")
    out = chosen.join(mean, how="outer").reset_index()
    datasets = packets[["trial", "dataset"]].drop_duplicates()
    if datasets["trial"].duplicated().any():
        raise ValueError("headline: one trial name with several datasets; aggregate one run at a time")
    out = out.merge(datasets, on="trial", how="left")
    use_mean = out["dataset"].isin(MEAN_DATASETS)
    out["DX"] = np.where(use_mean, out["DX_mean"], out[f"DX{label}"])
    out["DP"] = np.where(use_mean, out["DP_mean"], out[f"DP{label}"])
    out["label"] = out["dataset"].map(headline_label)
    return out
