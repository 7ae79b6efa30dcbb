"""The presets: named starting configurations, as the `key=value` overrides they stand for.

`raysweep run --preset NAME key=value ...` puts the overrides on top (`config.resolve`);
README's table of presets is checked against this one.
"""

from __future__ import annotations

from raysweep.core.regime import MNIST_TRADES, STANDARD
from raysweep.core.threat import MNIST_PGD, PAPER_PGD
from raysweep.errors import UserError
from raysweep.run.config import GRID_KEYS, RUN_KEYS, SweepConfig, convert, record, trial_config

PRESETS: dict[str, dict[str, str | list[str]]] = {  # a list sweeps its key
    # The quick demo: real handwritten digits, offline, about a minute on 2 CPU cores.
    "demo": {
        "arch": "mnist_conv3",
        "dataset": "digits",
        "seed": "0",
        "epochs": "20",
        "attacks": f"{MNIST_PGD}+{PAPER_PGD}",
        "dims": "64",
        "head_epochs": "5",
        "embed_points": "256",
    },
    # The paper's three networks and settings (paper Fig. 1 and 2), packets over every dimension.
    "paper": {
        "arch": "mnist_conv3,cifar_conv4,resnet9",
        "dataset": "mnist,cifar10,cifar10",
        "seed": "0",
        "epochs": "50",
        "attacks": f"{PAPER_PGD}+{MNIST_PGD}",
        "dims": "all",
        "embed_points": "1000",
    },
    # Does the Δx-Δp relation track the accuracy-robustness trade-off across models (SPEC 7)?
    # mnist_conv3 on Fashion-MNIST trained standard, with PGD (Madry) and with TRADES (beta 6, Zhang)
    # at the paper's MNIST budget, 2 seeds: 6 trials, robust accuracy under that budget and 8/255.
    "robust": {
        "arch": "mnist_conv3",
        "dataset": "fashion-mnist",
        "seed": "0,1",
        "epochs": "15",
        "training": [STANDARD, MNIST_PGD, MNIST_TRADES],
        "attacks": f"{MNIST_PGD}+{PAPER_PGD}",
        "dims": "64",
        "head_epochs": "5",
        "embed_points": "256",
    },
    # A seconds-long smoke test on generated images.
    "smoke": {
        "arch": "mnist_conv3",
        "dataset": "synthetic",
        "seed": "0",
        "epochs": "2",
        "dims": "4",
        "nodes": "8",
        "head_epochs": "2",
        "embed_points": "32",
    },
}


def resolve(preset: str, overrides: dict[str, str | list[str]]) -> SweepConfig:
    """The preset's values with the overrides on top, typed and checked; a key with a list of
    values is swept (arch, dataset and seed take theirs as comma lists too)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {k: v for k, v in {**PRESETS[preset], **overrides}.items() if k not in RUN_KEYS}
    for key in RUN_KEYS:
        if isinstance(overrides.get(key), list):
            raise UserError(f"{key}= is given {len(overrides[key])} times: a run has one place, give it once")
    grid = {}
    for key in GRID_KEYS:
        given = values.pop(key, "")
        text = ",".join(given) if isinstance(given, list) else given
        grid[key] = tuple(s.strip() for s in text.split(",") if s.strip())
        if not grid[key]:
            raise UserError(f"{key}= is empty: give at least one value")
    seeds = tuple(convert("seed", s) for s in grid["seed"])
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seed={','.join(grid['seed'])} lists a seed twice: give each seed once")
    swept = tuple((k, tuple(convert(k, v) for v in values.pop(k))) for k in list(values) if isinstance(values[k], list))
    template = trial_config(**{k: convert(k, v) for k, v in values.items()})
    for key, options in swept:  # each value checked alone, before anything loads
        for option in options:
            trial_config(**{**record(template), key: option})
    return SweepConfig(arch=grid["arch"], dataset=grid["dataset"], seed=seeds, trial=template, swept=swept)
