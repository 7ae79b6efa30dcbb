"""The sweep on Ray Tune: one trial per (arch, dataset, seed), Tune's checkpoints and retries.

Each Tune trial runs the core's epoch loop (`core.trial.Trial`); its packet stage fans
out through `tasks.RayRunner` into the trial's own placement group. Per epoch
the trial writes its rows to the run directory, then reports to Tune with a
checkpoint and its progress line. A trial that dies restarts from its newest
checkpoint (`FailureConfig(max_failures)`), trains again without measuring any
epoch whose rows were written after that checkpoint, and runs the epoch it was in
anew: no rows lost, none doubled. A checkpoint that is not this run's is never
loaded; the trial then trains again from the start. Tune keeps its own state in
`<run>/tune`, so `Tuner.restore` resumes a stopped run.

The driver watches (`Watch`, a Tune callback and stopper): it prints each trial's
epoch line as Tune hands it over, shows long stages while they run, and stops the
run with one line when a trial waits for resources no alive node can give (a node
lost for good). A request that no node could ever satisfy is refused before any
trial starts.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import ray
import torch
from ray import tune

from raysweep.core.config import TrialConfig
from raysweep.core.trial import EpochResult, Trial
from raysweep.errors import UserError
from raysweep.run import progress
from raysweep.run.config import record, trial_config
from raysweep.run.local import epoch_line, last_written, write_epoch
from raysweep.run.ray import cluster
from raysweep.run.ray.tasks import RayRunner, worker_setup
from raysweep.store import TUNE_FOLDER, CheckpointError, RunStore

STATE_FILE = "state.pt"
MAX_FAILURES = 3  # restarts of a trial from its newest checkpoint
# A trial may wait this long for resources no alive node has (nodes may be joining).
UNPLACEABLE_GRACE_S = float(os.environ.get("RAYSWEEP_NODE_GRACE_S", "30"))


def bundle_gpus(config: TrialConfig, cluster_has_gpus: bool) -> float:
    """GPU share per bundle: as configured, else one GPU split over the trial and its task bundles."""
    if config.resources.gpus is not None:
        return config.resources.gpus
    return 1 / (config.resources.workers + 1) if cluster_has_gpus else 0.0


def bundles(config: TrialConfig, cluster_has_gpus: bool) -> list[dict[str, float]]:
    """The trial's bundle first (Tune runs the trainable there), then one per packet worker."""
    gpus = bundle_gpus(config, cluster_has_gpus)
    bundle = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
    return [bundle] + [dict(bundle) for _ in range(config.resources.workers)]


def resources(config: TrialConfig, cluster_has_gpus: bool) -> tune.PlacementGroupFactory:
    return tune.PlacementGroupFactory(bundles(config, cluster_has_gpus))


def trainable(params: dict) -> None:
    """Tune's function trainable: params = {"trial": TrialConfig fields, "run": run URI, "task_gpus": float}."""
    worker_setup()
    config = trial_config(**params["trial"])
    # The task bundles idle while the trial trains (it waits on its tasks in the packet stage), so by
    # default training uses every CPU of the trial's placement group, not Ray's one-per-bundle.
    torch.set_num_threads(config.resources.threads or int(1 + config.resources.workers))
    store = RunStore(params["run"])
    stages = progress.StageFile(store, config.name, ray.get_runtime_context().get_node_id())
    try:
        last = last_written(store, config)
        trial = Trial.restored(config, _checkpoint_state(store, config.name, last), last)
        # While its tasks run the trial only waits, so its CPU goes to them too.
        task_threads = config.resources.threads or max(1, (1 + config.resources.workers) // config.resources.workers)
        runner = RayRunner(cpus=1, gpus=params["task_gpus"], threads=task_threads, trial=config.name)
        while not trial.done:
            result = trial.run_epoch(runner, stages.hook(trial.epoch + 1, config.train.epochs))
            write_epoch(store, config, result)
            with tempfile.TemporaryDirectory() as folder:
                with open(os.path.join(folder, STATE_FILE), "wb") as f:
                    f.write(store.checkpoint_bytes(config.name, trial.state_dict()))
                tune.report(
                    {**summary(result), "line": epoch_line(config, result)},
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )
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
            logging.getLogger(__name__).warning("[%s] checkpoint %s: not used; training again from the start", trial, exc)
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


class Watch(tune.Callback, tune.Stopper):
    """The driver's view of the run: epoch lines, live stages, and a stop when trials can never be placed."""

    def __init__(self, store: RunStore, say: progress.Say) -> None:
        self.store, self.say = store, say
        self.reason: str | None = None
        self._running: set[str] = set()
        self._waiting_since: dict[str, float] = {}
        self._last_look = 0.0

    # -- callback -----------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("line"):
            self.say(result["line"])

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_look < 2.0:
            return
        self._last_look = now
        self._running = {_name(t) for t in trials if t.status == "RUNNING"}
        pending = [t for t in trials if t.status == "PENDING"]
        if not pending:
            self._waiting_since.clear()
            return
        nodes = cluster.alive_nodes()
        for t in pending:
            why = cluster.unplaceable(t.placement_group_factory.bundles, nodes)
            if why is None:
                self._waiting_since.pop(t.trial_id, None)
                continue
            since = self._waiting_since.setdefault(t.trial_id, now)
            if now - since >= UNPLACEABLE_GRACE_S and self.reason is None:
                lost = cluster.lost_nodes()
                self.reason = f"trial {_name(t)} cannot be placed any more: {why}" + (f"; lost node(s): {lost}" if lost else "")

    def stages(self) -> list[progress.Stage]:
        """Stages of the running trials, from the files they write (for `progress.Monitor`)."""
        return [s for name in sorted(self._running) if (s := progress.read_stage(self.store, name))]

    def __getstate__(self) -> dict:
        # Tune pickles its run config into the experiment state; a restored run gets a new Watch.
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__(None, lambda line: None)  # type: ignore[arg-type]

    # -- stopper ------------------------------------------------------------------
    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.reason is not None


class _Interrupted(logging.Filter):
    """Notes Tune's word that a SIGINT stopped the experiment, and keeps its own restore hint and
    stop notice off the terminal (raysweep names `raysweep resume` instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(("Experiment has been interrupted", "Training has been interrupted")):
            self.seen = True
            return False
        return not message.startswith("Stop signal received")


def _trainable_with_resources(trials: list[TrialConfig]):
    return tune.with_resources(trainable, resources(trials[0], cluster.has_gpus()))


def _name(tune_trial) -> str:
    return trial_config(**tune_trial.config["trial"]).name


def check_placeable(trials: list[TrialConfig]) -> None:
    """Refuse, before any trial starts, a resource request that no node of the cluster can satisfy."""
    nodes = cluster.alive_nodes()
    for config in trials:
        why = cluster.unplaceable(bundles(config, cluster.has_gpus()), nodes)
        if why:
            raise UserError(
                f"trial {config.name} asks for resources this cluster cannot give: {why}; lower gpus= or workers=, "
                "or add a node that has them"
            )


def run(store: RunStore, trials: list[TrialConfig], *, address: str | None = None, say: progress.Say = print) -> None:
    """Run the grid as Tune trials; raises UserError naming any trial that stopped on bad input."""
    cluster.connect(address)
    check_placeable(trials)
    param_space = {
        "trial": tune.grid_search([record(t) for t in trials]),
        "run": store.location,
        "task_gpus": bundle_gpus(trials[0], cluster.has_gpus()),
    }
    watch = Watch(store, say)
    tuner = tune.Tuner(
        _trainable_with_resources(trials),
        param_space=param_space,
        tune_config=tune.TuneConfig(trial_name_creator=_name, trial_dirname_creator=_name),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER,
            storage_path=store.location,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[watch],
            stop=watch,
            verbose=0,
        ),
    )
    _fit(tuner, store, watch, say)


def resume(store: RunStore, trials: list[TrialConfig], *, address: str | None = None, say: progress.Say = print) -> None:
    """Continue a stopped or crashed Tune run from its newest checkpoints."""
    cluster.connect(address)
    check_placeable(trials)
    path = store.child(TUNE_FOLDER)
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{store.uri} has no Tune state to resume from: start it again with `raysweep run`")
    watch = Watch(store, say)
    # Tune keeps the stopper and callbacks of the first run in its state; these are this driver's.
    tuner = tune.Tuner.restore(path, trainable=_trainable_with_resources(trials), resume_errored=True)
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks, run_config.stop = [watch], watch
    _fit(tuner, store, watch, say)


def _fit(tuner: tune.Tuner, store: RunStore, watch: Watch, say: progress.Say) -> None:
    interrupted = _Interrupted()
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(interrupted)
    try:
        with progress.Monitor(store, say, watch.stages, executor="ray"):
            results = tuner.fit()
            if interrupted.seen:
                raise KeyboardInterrupt
    finally:
        tune_log.removeFilter(interrupted)
    if watch.reason:
        raise UserError(watch.reason)
    _check(results)


def _check(results: tune.ResultGrid) -> None:
    problems = [
        (result.metrics or {}).get("error") or (str(result.error).strip().splitlines()[-1] if result.error else None)
        for result in results
    ]
    problems = [p for p in problems if p]
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more trial(s) failed)" if len(problems) > 1 else ""))
