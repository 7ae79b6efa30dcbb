"""Ray's share: the same demo epochs through local Ray and through `--executor local` (SPEC 5: <= 1.25x).

    python bench/ray_overhead.py [--epochs 6] [--smoke-test] [key=value ...]

Both runs use the same config and seed; the per-epoch `seconds` the trial records
(train + evaluate + feature space + packets) are compared, leaving out epoch 1
(warm-up: first task dispatch, worker start). Prints a table and the ratio.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time

import torch

from raysweep import config, raycluster, sweep, tuner
from raysweep.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--smoke-test", action="store_true", help="two tiny epochs, for the tests")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    overrides = {"epochs": str(args.epochs), **config.parse_overrides(args.overrides)}
    preset = "smoke" if args.smoke_test else "demo"
    if args.smoke_test:
        overrides["epochs"] = "2"
    trials = config.resolve(preset, overrides).trials()
    cfg = trials[0]
    pixel, feature = math.prod((1, 28, 28)), None
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "ray"):
            store = RunStore(f"{tmp}/{executor}")
            store.create({})
            start = time.perf_counter()
            if executor == "local":
                sweep.run_trials(store, trials, progress=lambda line: None)
            else:
                with raycluster.session():
                    tuner.run(store, trials)
            wall = time.perf_counter() - start
            epochs = store.read("epochs").drop_duplicates(["trial", "epoch"])
            steady = epochs[epochs["epoch"] > 1]["seconds"]
            rows[executor] = (statistics.median(steady), wall)
            feature = len(store.read("packets").query("space == 'feature'")["dim"].unique())
    dims_pixel = min(cfg.dims or pixel, pixel)
    tasks = -(-dims_pixel // cfg.chunk) + (-(-feature // cfg.chunk) if feature else 0)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, preset {preset}, "
          f"{cfg.epochs} epochs, dims={cfg.dims}, chunk={cfg.chunk}: {tasks} packet tasks per epoch")
    print(f"{'executor':<8} {'median epoch s':>15} {'run wall s':>11}")
    for executor, (epoch_s, wall) in rows.items():
        print(f"{executor:<8} {epoch_s:>15.3f} {wall:>11.1f}")
    print(f"ratio ray/local per epoch: {rows['ray'][0] / rows['local'][0]:.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
