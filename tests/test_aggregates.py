"""ΔX, ΔP (paper Eq. 23) from per-pair rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raysweep.analysis.aggregates import headline, spreads


def packets_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"trial": "t", "epoch": e, "space": s, "class": c, "dim": d, "sx": rng.uniform(0.1, 0.3), "sp": rng.uniform(0, 2)}
        for e in (1, 2) for s in ("pixel", "feature") for c in range(10) for d in range(5)
    ]
    return pd.DataFrame(rows)


def test_spreads_are_square_roots_of_summed_spreads() -> None:
    frame = packets_frame()
    out = spreads(frame)
    one = frame[(frame.epoch == 2) & (frame.space == "pixel") & (frame["class"] == 8)]
    row = out[(out.epoch == 2) & (out.space == "pixel") & (out["class"] == 8)].iloc[0]
    assert row.DX == pytest.approx(math.sqrt(one.sx.sum()))
    assert row.DP == pytest.approx(math.sqrt(one.sp.sum()))
    assert row.dims == 5 and row.missing == 0


def test_pairs_without_a_packet_are_left_out_and_counted() -> None:
    frame = packets_frame()
    hole = (frame.space == "feature") & (frame.dim == 0)
    frame.loc[hole, ["sx", "sp"]] = np.nan
    out = spreads(frame)
    feature = out[out.space == "feature"]
    assert (feature.dims == 4).all() and (feature.missing == 1).all()
    assert np.isfinite(feature.DX).all()


def test_headline_is_class_8_on_mnist_style_data_and_the_class_mean_on_cifar10() -> None:
    one = packets_frame()
    frame = pd.concat([one.assign(dataset="digits"), one.assign(trial="c", dataset="cifar10")], ignore_index=True)
    out = headline(frame).set_index(["trial", "epoch", "space"])
    per_class = spreads(one)
    feature = per_class[(per_class.epoch == 1) & (per_class.space == "feature")]
    mean_dx, c8_dp = feature.DX.mean(), feature[feature["class"] == 8].DP.item()
    digits, cifar = out.loc[("t", 1, "feature")], out.loc[("c", 1, "feature")]
    assert digits["DX_mean"] == pytest.approx(mean_dx) and digits["DP_class8"] == pytest.approx(c8_dp)
    assert digits["DP"] == pytest.approx(c8_dp) and digits["label"] == "class 8"
    assert cifar["DX"] == pytest.approx(mean_dx) and cifar["label"] == "mean over classes"


def test_headline_refuses_a_trial_name_of_two_datasets() -> None:
    one = packets_frame()
    frame = pd.concat([one.assign(dataset="digits"), one.assign(dataset="cifar10")], ignore_index=True)
    with pytest.raises(ValueError, match="one run at a time"):
        headline(frame)
