"""`raysweep run | resume | status`: the command line.

Bad input exits with status 2 and one line naming the fix; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from typing import TYPE_CHECKING

from raysweep.analysis import script
from raysweep.choices import EXECUTORS
from raysweep.errors import UserError
from raysweep.run import config as cfg
from raysweep.run.presets import PRESETS, resolve

if TYPE_CHECKING:
    from raysweep.core.config import TrialConfig
    from raysweep.store import RunStore


def _keys_help() -> str:
    """The keys by concern (the part of the config each sets), with their defaults."""
    defaults = cfg.record(cfg.trial_config())
    lines = []
    for key, (part, _) in cfg.KEYS.items():
        if key in cfg.INTERNAL:
            continue
        lines.append(f"  {key:<13} {part or 'trial':<9} default {defaults[key]!r}")
    return "\n".join(lines)


_EPILOG = f"""\
overrides (key=value, applied on top of the preset; arch, dataset and seed take comma lists):
a key given more than once is swept, and the grid is the product of every swept key
(values may hold commas: attacks=pgd:eps=8/255,alpha=2/255,steps=4 attacks=fgsm:eps=0.1);
larger sweeps go in a file: --sweep FILE
  storage       run       the run directory: a path or a pyarrow filesystem URI (same as --out)
{_keys_help()}

presets: {'; '.join(f"{name} ({' '.join(f'{k}={x}' for k, v in values.items() for x in (v if isinstance(v, list) else [v]))})" for name, values in PRESETS.items())}

examples:
  raysweep run --preset demo
  raysweep run --preset demo dataset=fashion-mnist data_root=/usr/share/datasets/fashion-mnist epochs=10
  raysweep run --preset paper seed=0,1 --out runs/paper
  raysweep run --preset demo training=standard training=pgd:eps=0.1,alpha=0.025,steps=4 seed=0,1
  raysweep run --preset robust data_root=/usr/share/datasets/fashion-mnist    # standard vs PGD vs TRADES
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
    run.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="starting configuration (default: demo)")
    run.add_argument(
        "--executor", default="ray", choices=EXECUTORS,
        help="ray: Ray Tune trials with packet tasks (default); local: in-process, no Ray",
    )
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    run.add_argument("--out", help="run directory or URI (default: runs/<preset>-<UTC time>)")
    run.add_argument("--sweep", metavar="FILE",
                     help="a sweep file (YAML or JSON, like Tune's param_space: {\"lr\": {\"grid_search\": [0.001, 0.01]}}); "
                          "key=value on the command line replaces a key of the file")
    run.add_argument("--yes", action="store_true", help=f"run a grid of more than {cfg.MAX_TRIALS} trials")
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
    script.arguments(epochs=True, parser=figures)
    figures.add_argument("--no-tsne", action="store_true", help="skip Fig. 1 (its t-SNE takes seconds per epoch)")
    return parser


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
    # Everything the command line says is checked before torch, pyarrow or Ray loads.
    overrides = {**(cfg.sweep_file(args.sweep) if args.sweep else {}), **cfg.parse_overrides(args.overrides)}
    sweep_config = resolve(args.preset, overrides)
    trials = sweep_config.trials()
    if len(trials) > cfg.MAX_TRIALS and not args.yes:
        raise UserError(f"the grid has {len(trials)} trials (more than {cfg.MAX_TRIALS}): pass --yes to run them all, "
                        "or sweep fewer values")
    if args.out and overrides.get("storage") and args.out != overrides["storage"]:
        raise UserError(f"--out {args.out} and storage={overrides['storage']} disagree: give one of them")
    given = args.out or overrides.get("storage")
    out = given or f"runs/{args.preset}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    _check_out_in_job(out, bool(given))
    if args.executor == "local" and args.address:
        raise UserError(f"--address {args.address} joins a Ray cluster, but --executor local runs without Ray: drop one")
    from raysweep import store
    from raysweep.run import local, provenance

    run_store = store.RunStore(out)
    run_store.check_new()
    local.preflight(trials)
    with _cluster(args.executor, args.address):  # connect first: a dead address leaves no half-made run
        if args.executor == "ray":
            from raysweep.run.ray import tuner

            tuner.check_placeable(trials)  # before the run exists: an impossible request writes nothing
        run_store.create(provenance.manifest(sweep_config, preset=args.preset, overrides=overrides, executor=args.executor))
        _CURRENT_RUN.append(out)
        swept = "".join(f"; {k} swept over {len(v)} values" for k, v in sweep_config.swept)
        _say(f"raysweep: {len(trials)} trial(s){swept}, executor {args.executor} -> {out}")
        _execute(args.executor, run_store, trials, address=args.address, resume=False)
    _say(f"raysweep: done. Results in {out} (status: raysweep status {out})")
    return 0


def _cluster(executor: str, address: str | None) -> contextlib.AbstractContextManager:
    if executor == "local":
        return contextlib.nullcontext()
    from raysweep.run.ray import cluster

    return cluster.session(address)


def _execute(executor: str, run_store: RunStore, trials: list[TrialConfig], *, address: str | None, resume: bool) -> None:
    if executor == "local":
        from raysweep.run import local

        local.run_local_driver(run_store, trials, _say)
        return
    from raysweep.run.ray import tuner

    (tuner.resume if resume else tuner.run)(run_store, trials, address=address, say=_say)


def _open_run(path: str) -> tuple[RunStore, list[TrialConfig]]:
    from raysweep import store

    run_store = store.RunStore(path)
    return run_store, cfg.trial_configs(run_store.manifest())


def _resume(args: argparse.Namespace) -> int:
    from raysweep import __version__, store
    from raysweep.run import local

    run_store = store.RunStore(args.run_dir)
    if not run_store.exists() and run_store.recoverable_trials():
        executor = "ray" if run_store.has_tune_state() else "local"
        manifest = run_store.rebuild_manifest({"raysweep": __version__, "executor": executor})
        print(f"raysweep: rebuilt {run_store.manifest_path} from the Parquet files ({len(manifest['trials'])} trial(s))")
    run_store, trials = _open_run(args.run_dir)
    _CURRENT_RUN.append(args.run_dir)
    recomputed = local.repair(run_store, trials, progress=_say)
    for problem in run_store.checkpoint_problems():
        print(f"raysweep: note: checkpoint {problem}; it is never resumed from (delete it at will)")
    if all(local.last_written(run_store, t) >= t.train.epochs for t in trials):
        done = f"finished after {recomputed} repair(s)" if recomputed else "already finished; nothing to do"
        print(f"raysweep: {args.run_dir} is {done}")
        return 0
    executor = run_store.manifest().get("executor", "local")
    with _cluster(executor, args.address):
        _execute(executor, run_store, trials, address=args.address, resume=True)
    _say(f"raysweep: done. Results in {args.run_dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from raysweep.run import progress

    run_store, trials = _open_run(args.run_dir)
    print(f"{args.run_dir}: {progress.liveness(run_store)}")
    problems = [
        f"DAMAGED {reason}; `raysweep resume {args.run_dir}` measures epoch {epoch} of {trial.name} again"
        for trial in trials
        for epoch, tables in run_store.damaged_epochs(trial.name, embeddings=trial.keeps_embeddings, deep=args.deep).items()
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
    flagged = run_store.read("packets", columns=["trial", "flagged"]).groupby("trial")["flagged"].agg(["sum", "size"])
    width = max([40, *(len(t.name) for t in trials)])  # a sweep's names are longer
    for trial in trials:
        done = run_store.epochs_written(trial.name)
        state = "done" if len(done) >= trial.train.epochs else ("running or stopped" if done else "not started")
        line = f"{trial.name:<{width}} {state:<18} epochs {len(done)}/{trial.train.epochs}"
        rows = epochs[(epochs["trial"] == trial.name) & (epochs["space"] == "pixel")]
        if len(rows):
            last = rows[rows["epoch"] == rows["epoch"].max()].iloc[0]
            line += f"  test {last['test_acc']:.1%}  robust {last['robust_acc']:.1%} ({last['attack']})"
        if trial.name in flagged.index and (count := int(flagged.loc[trial.name, "sum"])):
            line += (f"  FLAGGED {count} of {int(flagged.loc[trial.name, 'size'])} pairs (estimated error above "
                     f"tol={trial.packets.tol})")
        print(line)
    return 0


def _figures(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from raysweep.scripts import fig1, fig2, report, sweep
    from raysweep.store import RunStore

    script.parse_epochs(args.epochs)
    loaded = script.loaded(args.runs)
    chosen = script.check_epochs(args.epochs, loaded) if not args.no_tsne else []
    first = RunStore(args.runs[0])
    with contextlib.ExitStack() as stack:
        if args.out or first.is_local:
            out = Path(args.out or Path(first.root) / "figures")
        else:  # drawn here, then copied into RUN/figures on the run's own storage
            out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for note in loaded.notes:
            print(f"raysweep: note: {note}", file=sys.stderr)
        written = report.write(loaded, out) + fig2.draw(loaded, out, args.format) + sweep.draw(loaded, out, args.format)
        if not args.no_tsne:
            written += fig1.draw(loaded, out, args.format, chosen)
        if not (args.out or first.is_local):
            written = [first.upload(path, f"figures/{path.name}") for path in written]
        for path in written:
            print(path)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
