"""Ray's share: a whole demo run through local Ray against `--executor local` (SPEC 5: <= 1.25x).

    python bench/ray_overhead.py [--epochs 20] [--threads N] [--smoke-test] [key=value ...]

Both runs use the same config and seed, one after the other in this process. Per
run it reports the sum of the per-epoch `seconds` the trial records (train,
evaluate, feature space, packets: every epoch, the first included, so a packet
worker that is started again in a later epoch shows up), the same after epoch 1
(the first packet task starts its worker), the slowest epoch after the first, and
the run's wall time (Ray's start included). Prints a table and the
ratios.
"""

from __future__ import annotations

import tempfile
import time

from common import parser, setup

from raysweep.run import config, local, presets
from raysweep.run.ray import cluster, tuner
from raysweep.store import RunStore


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    setup(args.threads)
    overrides = {"epochs": str(2 if args.smoke_test else args.epochs), **config.parse_overrides(args.overrides)}
    preset = "smoke" if args.smoke_test else "demo"
    trials = presets.resolve(preset, overrides).trials()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "ray"):
            store = RunStore(f"{tmp}/{executor}")
            store.create({})
            start = time.perf_counter()
            if executor == "local":
                local.run_trials(store, trials, progress=lambda line: None)
            else:
                with cluster.session():
                    tuner.run(store, trials, say=lambda line: None)
            wall = time.perf_counter() - start
            seconds = store.read("epochs").drop_duplicates(["trial", "epoch"]).set_index("epoch")["seconds"]
            later = seconds[seconds.index > 1]
            rows[executor] = (seconds.sum(), later.sum(), later.max(), wall)
    cfg = trials[0]
    print(f"# preset {preset}, {cfg.train.epochs} epochs, dims={cfg.packets.dims}, chunk={cfg.packets.chunk}")
    print(f"{'executor':<8} {'sum of epoch s':>15} {'after epoch 1':>14} {'slowest after 1':>16} {'run wall s':>11}")
    for executor, (total, later, slowest, wall) in rows.items():
        print(f"{executor:<8} {total:>15.2f} {later:>14.2f} {slowest:>16.3f} {wall:>11.1f}")
    (lt, ll, ls, lw), (rt, rl, rs, rw) = rows["local"], rows["ray"]
    print(f"ratio ray/local: all epochs {rt / lt:.2f} (target <= 1.25), after epoch 1 {rl / ll:.2f}, "
          f"slowest after 1 {rs / ls:.2f}, wall {rw / lw:.2f}")


if __name__ == "__main__":
    main()
