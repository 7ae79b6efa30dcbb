"""Where a measured epoch's time goes: per-stage seconds of a preset's trials, in-process (SPEC 5, fourth target).

    python bench/epoch.py [--preset paper] [--epochs 2] [key=value ...] [--smoke-test]

Runs `Trial.run_epoch` with the in-process runner, which is what `raysweep run --executor local` does
each epoch (less the Parquet and checkpoint writes), for every trial of the preset with the overrides on
top. Stage functions are wrapped by timers that wait for the GPU; a stage called inside another is
charged to the outer one (the feature head's training to "feature head", not to "train"):
train (`train.train_epoch`), clean accuracy, attacks (`attacks.robust_accuracy`, both spaces), feature
head (`features.build`: extraction and the head's retraining), packets (every packet task, both spaces,
with estimator=auto's probe and refinement), embeddings (Fig. 1 material); "other" is the rest.
Last, each trial's last epoch times the preset's epoch count: an extrapolation of the whole preset, and
printed as one.

The data sets may be the real ones (`data_root=...`) or generated ones of the real size, e.g. for the
paper preset on a machine without the files:
`dataset=synthetic:1x28x28:60000:10000,synthetic:3x32x32:50000:10000,synthetic:3x32x32:50000:10000`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from common import parser, print_table, setup, sync
from raysweep.core import attacks, features, train
from raysweep.run import config, presets
from raysweep.core import trial as trial_module

STAGES: dict[str, tuple[object, str]] = {
    "train": (train, "train_epoch"),
    "clean acc": (attacks, "accuracy"),
    "attacks": (attacks, "robust_accuracy"),
    "feature head": (features, "build"),
    "packets": (trial_module, "run_local"),
    "embeddings": (trial_module.Trial, "_embeddings"),
}
SMOKE = ["epochs=1", "dims=4", "nodes=8", "head_epochs=1", "embed_points=16"]  # on --preset smoke


class StageClock:
    """Seconds per stage, charged to the outermost timed call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.seconds[stage] += time.perf_counter() - start
                self._depth -= 1

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        originals = {stage: getattr(owner, name) for stage, (owner, name) in STAGES.items()}
        for stage, (owner, name) in STAGES.items():
            setattr(owner, name, self.wrap(stage, originals[stage]))
        try:
            yield
        finally:
            for stage, (owner, name) in STAGES.items():
                setattr(owner, name, originals[stage])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="paper", choices=list(presets.PRESETS))
    p.add_argument("--epochs", type=int, default=2, help="measured epochs per trial (the first one warms up)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="as for `raysweep run`")
    args = p.parse_args()
    setup(args.threads)
    overrides = config.parse_overrides([*args.overrides, *(SMOKE if args.smoke_test else [])])
    preset = "smoke" if args.smoke_test else args.preset
    sweep = presets.resolve(preset, overrides)
    epochs = 1 if args.smoke_test else args.epochs
    columns = ["trial", "epoch", "setup", *STAGES, "other", "total"]
    rows, preset_seconds = [], 0.0
    print("# rows as they finish: " + " | ".join(columns), flush=True)
    for cfg in sweep.trials():
        clock = StageClock()
        start = time.perf_counter()
        trial = trial_module.Trial(cfg)
        setup_seconds = time.perf_counter() - start
        last = 0.0
        for _ in range(epochs):
            clock.seconds.clear()
            with clock.installed():
                sync()
                start = time.perf_counter()
                trial.run_epoch(trial_module.run_local)
                sync()
                last = time.perf_counter() - start
            staged = [clock.seconds.get(stage, 0.0) for stage in STAGES]
            rows.append([
                cfg.name, str(trial.epoch), f"{setup_seconds:.2f}" if trial.epoch == 1 else "",
                *(f"{s:.2f}" for s in staged), f"{last - sum(staged):.2f}", f"{last:.2f}",
            ])
            print("# " + " | ".join(rows[-1]), flush=True)
        preset_seconds += setup_seconds + last * cfg.train.epochs
    print(f"## seconds per measured epoch, --preset {preset} {' '.join(args.overrides)}")
    print_table(columns, rows)
    print(f"\nwhole preset ({sweep.trial.train.epochs} epochs per trial), EXTRAPOLATED from each trial's last epoch: "
          f"{preset_seconds:.0f} s = {preset_seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
