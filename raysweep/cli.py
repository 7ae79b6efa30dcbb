"""`raysweep run | resume | status`: the command line.

Bad input exits with status 2 and one line naming the fix; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
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
    status = sub.add_parser(
        "status", help="show a run's progress",
        description="Whether a driver is working on the run now, each trial's epochs done and last metrics, and any "
        "damaged file, from the run directory alone.",
    )
    status.add_argument("run_dir", metavar="RUN", help="the run directory")
    status.add_argument(
        "--deep", action="store_true",
        help="read every Parquet file whole and load every checkpoint (default: footers and archive directories only)",
    )
    figures = sub.add_parser(
        "figures", help="draw the paper's figures and the trade-off report",
        description="Fig. 1, Fig. 2 and a trade-off report (Markdown and CSV) from the Parquet outputs alone.",
    )
    figures.add_argument("runs", nargs="+", metavar="RUN", help="one or more run directories (several: compared)")
    figures.add_argument("--out", help="output folder (default: RUN/figures of the first run)")
    figures.add_argument("--format", default="png", choices=("png", "svg", "pdf"), help="figure file format (default: png)")
    figures.add_argument(
        "--epochs", help="epochs of the class-8 panels of Fig. 1, each one the run has (default: those nearest 1, 21, 41)",
    )
    figures.add_argument("--no-tsne", action="store_true", help="skip Fig. 1 (its t-SNE takes seconds per epoch)")
    return parser


DEFAULT_FIG1_EPOCHS = "1,21,41"  # the paper's Fig. 1 panels
_CURRENT_RUN: list[str] = []  # the run being driven, for the line an interrupt prints


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _CURRENT_RUN.clear()
    try:
        return {"run": _run, "resume": _resume, "status": _status, "figures": _figures}[args.command](args)
    except UserError as exc:
        print(f"raysweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = _CURRENT_RUN[-1] if _CURRENT_RUN else "RUN"
        print(f"raysweep: interrupted; finished epochs are kept: continue with `raysweep resume {where}`", file=sys.stderr)
        return 130


def _in_ray_job() -> bool:
    """True inside the entrypoint of `ray job submit` (Ray's job supervisor sets this variable)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def _check_out_in_job(out: str, given: bool) -> None:
    if _in_ray_job() and "://" not in out and not os.path.isabs(out):
        what = f"--out {out} is relative" if given else f"no --out was given (the default {out} is relative)"
        raise UserError(
            f"{what}, and inside a Ray job the working directory is a temporary copy that Ray deletes: give --out an "
            "absolute path on storage every node shares, or a URI such as s3://bucket/runs/name"
        )


def _run(args: argparse.Namespace) -> int:
    from raysweep import store, sweep

    overrides = cfg.parse_overrides(args.overrides)
    sweep_config = cfg.resolve(args.preset, overrides)
    trials = sweep_config.trials()
    if args.out and overrides.get("storage") and args.out != overrides["storage"]:
        raise UserError(f"--out {args.out} and storage={overrides['storage']} disagree: give one of them")
    given = args.out or overrides.get("storage")
    out = given or f"runs/{args.preset}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    _check_out_in_job(out, bool(given))
    if args.executor == "local" and args.address:
        raise UserError(f"--address {args.address} joins a Ray cluster, but --executor local runs without Ray: drop one")
    run_store = store.RunStore(out)
    run_store.check_new()
    sweep.preflight(trials)
    with _cluster(args.executor, args.address):  # connect first: a dead address leaves no half-made run
        if args.executor == "ray":
            from raysweep import tuner

            tuner.check_placeable(trials)  # before the run exists: an impossible request writes nothing
        run_store.create(sweep.manifest(sweep_config, preset=args.preset, overrides=overrides, executor=args.executor))
        _CURRENT_RUN.append(out)
        _say(f"raysweep: {len(trials)} trial(s), executor {args.executor} -> {out}")
        _execute(args.executor, run_store, trials, address=args.address, resume=False)
    _say(f"raysweep: done. Results in {out} (status: raysweep status {out})")
    return 0


def _cluster(executor: str, address: str | None) -> contextlib.AbstractContextManager:
    if executor == "local":
        return contextlib.nullcontext()
    from raysweep import raycluster

    return raycluster.session(address)


def _execute(executor: str, run_store: RunStore, trials: list[cfg.TrialConfig], *, address: str | None, resume: bool) -> None:
    if executor == "local":
        from raysweep import sweep

        sweep.run_local_driver(run_store, trials, _say)
        return
    from raysweep import tuner

    (tuner.resume if resume else tuner.run)(run_store, trials, address=address, say=_say)


def _open_run(path: str) -> tuple[RunStore, list[cfg.TrialConfig]]:
    from raysweep import store

    run_store = store.RunStore(path)
    return run_store, cfg.trial_configs(run_store.manifest())


def _resume(args: argparse.Namespace) -> int:
    from raysweep import __version__, store, sweep

    run_store = store.RunStore(args.run_dir)
    if not run_store.exists() and run_store.recoverable_trials():
        executor = "ray" if run_store.has_tune_state() else "local"
        manifest = run_store.rebuild_manifest({"raysweep": __version__, "executor": executor})
        print(f"raysweep: rebuilt {run_store.manifest_path} from the Parquet files ({len(manifest['trials'])} trial(s))")
    run_store, trials = _open_run(args.run_dir)
    _CURRENT_RUN.append(args.run_dir)
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
    _say(f"raysweep: done. Results in {args.run_dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from raysweep import progress

    run_store, trials = _open_run(args.run_dir)
    print(f"{args.run_dir}: {progress.liveness(run_store)}")
    problems = [
        f"DAMAGED {reason}; `raysweep resume {args.run_dir}` measures epoch {epoch} of {trial.name} again"
        for trial in trials
        for epoch, tables in run_store.damaged_epochs(trial, deep=args.deep).items()
        for reason in tables.values()
    ] + [
        f"CHECKPOINT {problem}; `raysweep resume {args.run_dir}` does not resume from it"
        for problem in run_store.checkpoint_problems(deep=args.deep)
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
        chosen = [int(e) for e in (args.epochs or DEFAULT_FIG1_EPOCHS).split(",") if e.strip()]
    except ValueError:
        raise UserError(f"--epochs {args.epochs!r}: give comma-separated epoch numbers, e.g. 1,21,41") from None
    from raysweep.store import RunStore

    loaded = results.load(args.runs)
    if loaded.epochs.empty:
        raise UserError(f"{', '.join(args.runs)}: no epoch has finished yet, so there is nothing to draw: "
                        f"see `raysweep status {args.runs[0]}`")
    have = sorted(set(loaded.embeddings["epoch"]) if not loaded.embeddings.empty else set(loaded.epochs["epoch"]))
    # Epochs named on the command line must exist; the default is snapped to the nearest ones (figures.fig1).
    if args.epochs and not args.no_tsne and (missing := [e for e in chosen if e not in have]):
        raise UserError(f"--epochs {args.epochs}: the run has no epoch {missing[0]} (epochs {have[0]}-{have[-1]} "
                        f"are there): give epochs it has, e.g. --epochs {','.join(map(str, have[:: max(1, len(have) // 3)][:3]))}")
    first = RunStore(args.runs[0])
    with contextlib.ExitStack() as stack:
        if args.out or first.is_local:
            out = Path(args.out or Path(first.root) / "figures")
        else:  # drawn here, then copied into RUN/figures on the run's own storage
            import tempfile

            out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for note in loaded.notes:
            print(f"raysweep: note: {note}", file=sys.stderr)
        written = report.write(loaded, out) + figures.fig2(loaded, out, args.format)
        if not args.no_tsne:
            written += figures.fig1(loaded, out, args.format, chosen)
        if not (args.out or first.is_local):
            written = [first.upload(path, f"figures/{path.name}") for path in written]
        for path in written:
            print(path)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
