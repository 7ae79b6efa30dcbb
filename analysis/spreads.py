"""Print ΔX and ΔP (paper Eq. 23) per trial, epoch and space of a run, from `packets/` alone.

    python analysis/spreads.py RUN [--csv OUT.csv]

Class 8 is the paper's MNIST headline, the mean over classes its CIFAR-10 one.
"""

from __future__ import annotations

import argparse
import sys

from raysweep import aggregates
from raysweep.errors import UserError
from raysweep.store import RunStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory")
    parser.add_argument("--csv", help="also write the table here")
    args = parser.parse_args(argv)
    try:
        store = RunStore(args.run)
        store.manifest()
        table = aggregates.headline(store.read("packets"))
    except UserError as exc:
        print(f"spreads: error: {exc}", file=sys.stderr)
        return 2
    epochs = store.read("epochs")
    first_attack = epochs.groupby(["trial", "epoch", "space"])[["test_acc", "robust_acc"]].first().reset_index()
    table = table.merge(first_attack, on=["trial", "epoch", "space"], how="left")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
