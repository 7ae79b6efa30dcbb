"""The sweep on Ray Tune: one trial per (arch, dataset, seed), Tune's checkpoints and retries.

Each Tune trial runs the core's epoch loop (`trial.Trial`); its packet stage fans
out through `remote.RayRunner` into the trial's own placement group. Per epoch
the trial writes its rows to the run directory, then reports to Tune with a
checkpoint. A trial that dies restarts from its newest checkpoint
(`FailureConfig(max_failures)`), trains again without measuring any epoch whose
rows were written after that checkpoint, and runs the epoch it was in anew: no
rows lost, none doubled. A checkpoint that is not this run's is never loaded;
the trial then trains again from the start. Tune keeps its own state in
`<run>/tune`, so `Tuner.restore` resumes a stopped run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import torch
from ray import tune

from raysweep import raycluster
from raysweep.config import TrialConfig
from raysweep.errors import UserError
from raysweep.remote import RayRunner
from raysweep.store import TUNE_FOLDER, CheckpointError, RunStore
from raysweep.sweep import epoch_line, last_written
from raysweep.trial import EpochResult, Trial

STATE_FILE = "state.pt"
MAX_FAILURES = 3  # restarts of a trial from its newest checkpoint


def bundle_gpus(config: TrialConfig, cluster_has_gpus: bool) -> float:
    """GPU share per bundle: as configured, else one GPU split over the trial and its task bundles."""
    if config.gpus is not None:
        return config.gpus
    return 1 / (config.workers + 1) if cluster_has_gpus else 0.0


def resources(config: TrialConfig, cluster_has_gpus: bool) -> tune.PlacementGroupFactory:
    """The trial's bundle first (Tune runs the trainable there), then one per packet worker."""
    gpus = bundle_gpus(config, cluster_has_gpus)
    bundle = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
    return tune.PlacementGroupFactory([bundle] + [dict(bundle) for _ in range(config.workers)])


def trainable(params: dict) -> None:
    """Tune's function trainable: params = {"trial": TrialConfig fields, "run": run URI, "task_gpus": float}."""
    config = TrialConfig(**params["trial"])
    # The task bundles idle while the trial trains (it waits on its tasks in the packet stage), so by
    # default training uses every CPU of the trial's placement group, not Ray's one-per-bundle.
    torch.set_num_threads(config.threads or int(1 + config.workers))
    store = RunStore(params["run"])
    try:
        last = last_written(store, config)
        trial = Trial.restored(config, _checkpoint_state(store, config.name, last), last)
        # While its tasks run the trial only waits, so its CPU goes to them too.
        task_threads = config.threads or max(1, (1 + config.workers) // config.workers)
        runner = RayRunner(cpus=1, gpus=params["task_gpus"], threads=task_threads)
        while not trial.done:
            result = trial.run_epoch(runner)
            store.write_epoch(config, result)
            print(epoch_line(config, result), flush=True)
            with tempfile.TemporaryDirectory() as folder:
                with open(os.path.join(folder, STATE_FILE), "wb") as f:
                    f.write(store.checkpoint_bytes(config.name, trial.state_dict()))
                tune.report(summary(result), checkpoint=tune.Checkpoint.from_directory(folder))
    except UserError as exc:
        # Bad input or a NaN repeats on every retry: end the trial and let the driver say why.
        tune.report({"error": str(exc)})


def _checkpoint_state(store: RunStore, trial: str, last: int) -> dict | None:
    """The state in Tune's checkpoint of this trial, or None (start over): none, unusable, or past `last`.

    (A checkpoint past the last written epoch means results were deleted: they are measured again.)
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder, open(os.path.join(folder, STATE_FILE), "rb") as f:
        try:
            state = store.parse_checkpoint(f.read(), trial)
        except CheckpointError as exc:
            print(f"[{trial}] checkpoint {exc}: not used; training again from the start", flush=True)
            return None
    return state if state["epoch"] <= last else None


def summary(result: EpochResult) -> dict:
    """Flat metrics for Tune: the first attack's row of each space."""
    out: dict = {"epoch": result.epoch}
    for row in result.metrics:
        prefix = f"{row['space']}_"
        out.setdefault(prefix + "test_acc", row["test_acc"])
        out.setdefault(prefix + "robust_acc", row["robust_acc"])
    return out


def _trainable_with_resources(trials: list[TrialConfig]):
    return tune.with_resources(trainable, resources(trials[0], raycluster.has_gpus()))


def _name(tune_trial) -> str:
    return TrialConfig(**tune_trial.config["trial"]).name


def _quiet() -> None:
    # Short epochs with num_to_keep make Tune force a state snapshot at each checkpoint, which is
    # what resume needs; its warning about that would flood the terminal.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def run(store: RunStore, trials: list[TrialConfig], *, address: str | None = None) -> None:
    """Run the grid as Tune trials; raises UserError naming any trial that stopped on bad input."""
    _quiet()
    raycluster.connect(address)
    param_space = {
        "trial": tune.grid_search([dataclasses.asdict(t) for t in trials]),
        "run": store.location,
        "task_gpus": bundle_gpus(trials[0], raycluster.has_gpus()),
    }
    tuner = tune.Tuner(
        _trainable_with_resources(trials),
        param_space=param_space,
        tune_config=tune.TuneConfig(trial_name_creator=_name, trial_dirname_creator=_name),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER,
            storage_path=store.location,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    _check(tuner.fit())


def resume(store: RunStore, trials: list[TrialConfig], *, address: str | None = None) -> None:
    """Continue a stopped or crashed Tune run from its newest checkpoints."""
    _quiet()
    raycluster.connect(address)
    path = f"{store.location}/{TUNE_FOLDER}"
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{store.uri} has no Tune state to resume from: start it again with `raysweep run`")
    tuner = tune.Tuner.restore(path, trainable=_trainable_with_resources(trials), resume_errored=True)
    _check(tuner.fit())


def _check(results: tune.ResultGrid) -> None:
    problems = [
        (result.metrics or {}).get("error") or (str(result.error).splitlines()[0] if result.error else None)
        for result in results
    ]
    problems = [p for p in problems if p]
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more trial(s) failed)" if len(problems) > 1 else ""))
