"""`raysweep run | resume | status`: the command line.

Bad input exits with status 2 and one line naming the fix; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import sys
from typing import TYPE_CHECKING

from raysweep import config as cfg
from raysweep.errors import UserError

if TYPE_CHECKING:
    from raysweep.store import RunStore

_KEYS_HELP = "\n".join(
    f"  {f.name:<13} default {f.default!r}" for f in dataclasses.fields(cfg.TrialConfig)
)
_EPILOG = f"""\
overrides (key=value, applied on top of the preset; arch, dataset and seed take comma lists):
  storage       the run directory: a path or a pyarrow filesystem URI (same as --out)
{_KEYS_HELP}

presets: {', '.join(f"{name} ({', '.join(f'{k}={v}' for k, v in values.items())})" for name, values in cfg.PRESETS.items())}

examples:
  raysweep run --preset demo
  raysweep run --preset demo dataset=fashion-mnist data_root=/usr/share/datasets/fashion-mnist epochs=10
  raysweep run --preset paper seed=0,1 --out runs/paper
  raysweep run --preset paper storage=s3://bucket/runs/paper --address auto
  raysweep status runs/paper
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysweep",
        description="Measure accuracy, robustness and the uncertainty spreads Δx, Δp of networks while they train.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,resume,status,figures}")
    run = sub.add_parser(
        "run", help="start a sweep", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every (arch, dataset, seed) of the grid and measure each epoch into a run directory.",
    )
    run.add_argument("--preset", default="demo", choices=sorted(cfg.PRESETS), help="starting configuration (default: demo)")
    run.add_argument(
        "--executor", default="ray", choices=cfg.EXECUTORS,
        help="ray: Ray Tune trials with packet tasks (default); local: in-process, no Ray",
    )
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    run.add_argument("--out", help="run directory or URI (default: runs/<preset>-<UTC time>)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, see below")
    resume = sub.add_parser("resume", help="continue a stopped or crashed run", description="Continue every unfinished trial of a run from its newest checkpoint.")
    resume.add_argument("run_dir", metavar="RUN", help="the run directory")
    resume.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    status = sub.add_parser("status", help="show a run's progress", description="Each trial's epochs done and last metrics, from the run directory alone.")
    status.add_argument("run_dir", metavar="RUN", help="the run directory")
    figures = sub.add_parser(
        "figures", help="draw the paper's figures and the trade-off report",
        description="Fig. 1, Fig. 2 and a trade-off report (Markdown and CSV) from the Parquet outputs alone.",
    )
    figures.add_argument("runs", nargs="+", metavar="RUN", help="one or more run directories (several: compared)")
    figures.add_argument("--out", help="output folder (default: RUN/figures of the first run)")
    figures.add_argument("--format", default="png", choices=("png", "svg", "pdf"), help="figure file format (default: png)")
    figures.add_argument("--epochs", default="1,21,41", help="epochs of the class-8 panels of Fig. 1 (default: 1,21,41)")
    figures.add_argument("--no-tsne", action="store_true", help="skip Fig. 1 (its t-SNE takes seconds per epoch)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": _run, "resume": _resume, "status": _status, "figures": _figures}[args.command](args)
    except UserError as exc:
        print(f"raysweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysweep: interrupted; finished epochs are kept: continue with `raysweep resume RUN`", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from raysweep import store, sweep

    overrides = cfg.parse_overrides(args.overrides)
    sweep_config = cfg.resolve(args.preset, overrides)
    trials = sweep_config.trials()
    if args.out and overrides.get("storage") and args.out != overrides["storage"]:
        raise UserError(f"--out {args.out} and storage={overrides['storage']} disagree: give one of them")
    out = args.out or overrides.get("storage") or f"runs/{args.preset}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    run_store = store.RunStore(out)
    run_store.check_new()
    sweep.preflight(trials)
    with _cluster(args.executor, args.address):  # connect first: a dead address leaves no half-made run
        run_store.create(sweep.manifest(sweep_config, preset=args.preset, overrides=overrides, executor=args.executor))
        print(f"raysweep: {len(trials)} trial(s), executor {args.executor} -> {out}", flush=True)
        _execute(args.executor, run_store, trials, address=args.address, resume=False)
    print(f"raysweep: done. Results in {out} (status: raysweep status {out})")
    return 0


def _cluster(executor: str, address: str | None) -> contextlib.AbstractContextManager:
    if executor == "local":
        return contextlib.nullcontext()
    from raysweep import raycluster

    return raycluster.session(address)


def _execute(executor: str, run_store: RunStore, trials: list[cfg.TrialConfig], *, address: str | None, resume: bool) -> None:
    if executor == "local":
        from raysweep import sweep

        sweep.run_trials(run_store, trials, progress=_say)
        return
    from raysweep import tuner

    (tuner.resume if resume else tuner.run)(run_store, trials, address=address)


def _open_run(path: str) -> tuple[RunStore, list[cfg.TrialConfig]]:
    from raysweep import store, sweep

    run_store = store.RunStore(path)
    return run_store, sweep.trial_configs(run_store.manifest())


def _resume(args: argparse.Namespace) -> int:
    from raysweep import __version__, store, sweep

    run_store = store.RunStore(args.run_dir)
    if not run_store.exists() and run_store.recoverable_trials():
        executor = "ray" if run_store.has_tune_state() else "local"
        manifest = run_store.rebuild_manifest({"raysweep": __version__, "executor": executor})
        print(f"raysweep: rebuilt {run_store.manifest_path} from the Parquet files ({len(manifest['trials'])} trial(s))")
    run_store, trials = _open_run(args.run_dir)
    recomputed = sweep.repair(run_store, trials, progress=_say)
    for problem in run_store.checkpoint_problems():
        print(f"raysweep: note: checkpoint {problem}; it is never resumed from (delete it at will)")
    if all(sweep.last_written(run_store, t) >= t.epochs for t in trials):
        done = f"finished after {recomputed} repair(s)" if recomputed else "already finished; nothing to do"
        print(f"raysweep: {args.run_dir} is {done}")
        return 0
    executor = run_store.manifest().get("executor", "local")
    with _cluster(executor, args.address):
        _execute(executor, run_store, trials, address=args.address, resume=True)
    print(f"raysweep: done. Results in {args.run_dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    run_store, trials = _open_run(args.run_dir)
    problems = [
        f"DAMAGED {reason}; `raysweep resume {args.run_dir}` measures epoch {epoch} of {trial.name} again"
        for trial in trials
        for epoch, reason in run_store.damaged_epochs(trial).items()
    ] + [
        f"CHECKPOINT {problem}; `raysweep resume {args.run_dir}` does not resume from it" for problem in run_store.checkpoint_problems()
    ]
    for line in problems:
        print(line)
    if problems:
        return 1
    epochs = run_store.read("epochs")
    for trial in trials:
        done = run_store.epochs_written(trial.name)
        state = "done" if len(done) >= trial.epochs else ("running or stopped" if done else "not started")
        line = f"{trial.name:<40} {state:<18} epochs {len(done)}/{trial.epochs}"
        rows = epochs[(epochs["trial"] == trial.name) & (epochs["space"] == "pixel")]
        if len(rows):
            last = rows[rows["epoch"] == rows["epoch"].max()].iloc[0]
            line += f"  test {last['test_acc']:.1%}  robust {last['robust_acc']:.1%} ({last['attack']})"
        print(line)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raysweep import figures, report, results

    try:
        chosen = [int(e) for e in args.epochs.split(",") if e.strip()]
    except ValueError:
        raise UserError(f"--epochs {args.epochs!r}: give comma-separated epoch numbers, e.g. 1,21,41") from None
    loaded = results.load(args.runs)
    out = Path(args.out or Path(args.runs[0]) / "figures")
    for note in loaded.notes:
        print(f"raysweep: note: {note}", file=sys.stderr)
    written = report.write(loaded, out) + figures.fig2(loaded, out, args.format)
    if not args.no_tsne:
        written += figures.fig1(loaded, out, args.format, chosen)
    for path in written:
        print(path)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
