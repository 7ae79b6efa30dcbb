"""ΔX, ΔP (paper Eq. 23) from per-pair rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raysweep.aggregates import headline, spreads


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


def test_headline_has_class_8_and_the_class_mean() -> None:
    frame = packets_frame()
    out = headline(frame).set_index(["trial", "epoch", "space"])
    per_class = spreads(frame)
    mean = per_class[(per_class.epoch == 1) & (per_class.space == "feature")].DX.mean()
    assert out.loc[("t", 1, "feature"), "DX_mean"] == pytest.approx(mean)
    c8 = per_class[(per_class.epoch == 1) & (per_class.space == "feature") & (per_class["class"] == 8)].DP.item()
    assert out.loc[("t", 1, "feature"), "DP_class8"] == pytest.approx(c8)
