"""One trial's epoch loop: train, evaluate, measure packets in both spaces.

`Trial` is a plain class that a Ray Tune trainable wraps; it runs in-process
for `--executor local`. The packet stage goes through a `PacketRunner`, the
seam where Ray fans chunks of dimensions out as remote tasks. Chunks, not the
executor, fix the Monte-Carlo seeds, so every executor returns the same rows.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from raysweep.core import attacks, data, features, models, train
from raysweep.core.config import TrialConfig
from raysweep.core.regime import parse_regime
from raysweep.errors import UserError
from raysweep.core.lines import PacketStats
from raysweep.core.packets import packet_stats

PCA_DIMS = 50  # embeddings keep this many principal components (t-SNE's usual input)
CPU_CHUNK = 64  # dimensions per packet task on the CPU (chunk=None): enough tasks to spread over Ray workers


@dataclass(frozen=True)
class PacketTask:
    """One chunk of dimensions of one space: everything `packet_stats` needs."""

    space: str
    model: nn.Module
    x_base: torch.Tensor
    dims: torch.Tensor  # (D,) flat indices
    a: torch.Tensor  # (D,) interval starts
    b: torch.Tensor  # (D,) interval ends
    estimator: str  # as configured: auto chooses per chunk (`packets.choose`)
    nodes: int
    tol: float
    replicates: int
    loss_clip: float | None
    seed: int  # Monte-Carlo nodes of this chunk

    def run(self) -> PacketStats:
        """The chunk's statistics, on the device of its tensors, returned on the CPU."""
        stats = packet_stats(
            self.model, self.x_base, self.dims, self.a, self.b,
            estimator=self.estimator, nodes=self.nodes, tol=self.tol, replicates=self.replicates,
            loss_clip=self.loss_clip, generator=torch.Generator().manual_seed(self.seed),
        )
        return PacketStats(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in stats.__dict__.items()})

    def to(self, device: torch.device | str) -> PacketTask:
        """The same chunk with its model and tensors on `device` (the model is moved, not copied)."""
        return replace(self, model=self.model.to(device), x_base=self.x_base.to(device))


DimsDone = Callable[[int], None]  # told the number of dimensions finished so far
PacketRunner = Callable[[Sequence[PacketTask], DimsDone], list[PacketStats]]
StageHook = Callable[..., None]  # (stage, done=0, total=0): what the epoch is doing now


def run_local(tasks: Sequence[PacketTask], on_done: DimsDone = lambda dims: None) -> list[PacketStats]:
    """The in-process runner of `--executor local`."""
    results, dims = [], 0
    for task in tasks:
        results.append(task.run())
        dims += task.dims.numel()
        on_done(dims)
    return results


def _no_stage(stage: str, done: int = 0, total: int = 0) -> None:
    pass


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    metrics: list[dict]  # one row per (space, attack): the `epochs/` columns
    packets: dict[str, np.ndarray]  # columns of `packets/`, one row per (space, class, dim)
    embeddings: dict[str, np.ndarray]  # columns of `embeddings/`


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is visible: use device=cpu or device=auto")
    return torch.device(name)


class Trial:
    """State of one (arch, dataset, seed) trial across epochs."""

    def __init__(self, config: TrialConfig) -> None:
        self.config = config
        self.device = resolve_device(config.resources.device)
        self.data = data.load(
            config.data.dataset, config.data.data_root, download=config.data.download, device=self.device,
            limit_train=config.data.limit_train, limit_test=config.data.limit_test,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = models.build(config.arch, num_classes=self.data.num_classes).to(self.device)
        self.recipe = train.recipe_for(
            config.arch, lr=config.train.lr, batch_size=config.train.batch_size, weight_decay=config.train.weight_decay
        )
        self.regime = parse_regime(config.train.training)
        self.precision, self.channels_last = train.step_arithmetic(
            self.device, config.train.precision, self.recipe, images=self.data.x_train.dim() == 4
        )
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        n_features = self._check_shapes()
        steps = train.steps_per_epoch(self.data.x_train.shape[0], self.recipe.batch_size) * config.train.epochs
        self.optimizer, self.scheduler = train.make_optimizer(self.model, self.recipe, steps)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.x_base = self.data.x_train.mean(0)  # the paper's X_base: mean training input
        draw = torch.Generator().manual_seed(config.seed + 7919)
        self.dims = {
            "pixel": _draw_dims(math.prod(self.data.shape), config.packets.dims, draw, "pixel"),
            "feature": _draw_dims(n_features, config.packets.dims, draw, "feature"),
        }
        self.epoch = 0  # epochs completed

    def _check_shapes(self) -> int:
        """Feature count of the model on this data; a clear error if they do not fit."""
        probe = self.data.x_train[:2]
        try:
            with torch.no_grad():
                feats = self.model.features(probe).flatten(1)
                self.model.classifier(feats)
        except RuntimeError as exc:
            expected = models.input_shape(self.config.arch)
            hint = f" (it expects {'x'.join(map(str, expected))})" if expected else ""
            raise UserError(
                f"arch={self.config.arch}{hint} does not fit dataset={self.config.data.dataset} with inputs "
                f"{'x'.join(map(str, self.data.shape))}: pick a matching arch or dataset ({str(exc).splitlines()[0]})"
            ) from None
        return feats.shape[1]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "generator": self.generator.get_state(),
            "dims": self.dims,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.dims = state["dims"]

    @classmethod
    def restored(cls, config: TrialConfig, state: dict | None, epoch: int) -> Trial:
        """The trial after `epoch` epochs: from a checkpoint's state (None: the start), the rest trained again.

        The epochs between the checkpoint and `epoch` are trained without being measured,
        which reaches the state an unbroken run had (see `train_epoch`).
        """
        trial = cls(config)
        if state is not None:
            trial.load_state_dict(state)
        if trial.epoch > epoch:
            raise ValueError(f"checkpoint of epoch {trial.epoch} is past epoch {epoch}")
        while trial.epoch < epoch:
            trial.train_epoch()
        return trial

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.train.epochs

    def train_epoch(self) -> float:
        """Train one epoch without measuring it; returns the mean training loss. Advances `self.epoch`.

        Training draws only on the trial's own generator (measurements seed theirs from
        (seed, epoch)), so replaying epochs this way reaches the state an unbroken run had.
        """
        loss = train.train_epoch(
            self.model, self.optimizer, self.scheduler, self.data.x_train, self.data.y_train, self.recipe,
            generator=self.generator, epoch=self.epoch + 1, precision=self.precision,
            channels_last=self.channels_last, regime=self.regime,
        )
        self.epoch += 1
        return loss

    def run_epoch(self, runner: PacketRunner = run_local, on_stage: StageHook = _no_stage) -> EpochResult:
        """Train one epoch, then measure it. Advances `self.epoch`.

        `on_stage` hears each stage as it begins: train, attack, feature head,
        packets (with pairs done and total, as chunks finish), embeddings.
        """
        cfg, d = self.config, self.data
        start = time.perf_counter()
        on_stage("train")
        train_loss = self.train_epoch()
        epoch = self.epoch
        self.model.eval()
        on_stage("attack")
        # Attack randomness depends on (seed, epoch) only, so a resumed epoch repeats exactly.
        attack_gen = torch.Generator(self.device).manual_seed(cfg.seed * 100_003 + epoch)
        measured = {
            "pixel": self._measure(self.model, d.x_test, 0.0, 1.0, 1.0, train_loss, attack_gen)
        }
        tasks = self._packet_tasks("pixel", self.model, self.x_base, 0.0, 1.0, epoch) if "pixel" in cfg.packets.spaces else []
        if "feature" in cfg.packets.spaces:
            on_stage("feature head")
            fs = features.build(
                self.model, d.x_train, d.y_train, d.x_test, epochs=cfg.packets.head_epochs, seed=cfg.seed, epoch=epoch
            )
            measured["feature"] = self._measure(fs.head, fs.f_test, fs.lo, fs.hi, fs.scale, fs.train_loss, attack_gen)
            tasks += self._packet_tasks("feature", fs.head, fs.f_train.mean(0), fs.lo, fs.hi, epoch)
        classes = d.num_classes
        total = sum(task.dims.numel() for task in tasks) * classes
        on_stage("packets", 0, total)
        results = runner(tasks, lambda dims: on_stage("packets", dims * classes, total))
        _check_finite(tasks, results, epoch)
        packets = _packet_columns(tasks, results, epoch)
        on_stage("embeddings")
        embeddings = self._embeddings(epoch, attack_gen)
        seconds = time.perf_counter() - start
        metrics = [
            {"epoch": epoch, "space": space, **row, "seconds": seconds}
            for space, rows in measured.items()
            for row in rows
        ]
        return EpochResult(epoch, metrics, packets, embeddings)

    def _measure(self, model, x_test, lo, hi, scale, train_loss, generator) -> list[dict]:
        """Clean and robust accuracy for each attack, with the budget in this space's units."""
        y = self.data.y_test
        test_acc = attacks.accuracy(model, x_test, y)
        rows = []
        for attack in self.config.attacks:
            scaled = attack.scaled(scale) if scale != 1.0 else attack
            robust = attacks.robust_accuracy(model, x_test, y, scaled, lo=lo, hi=hi, generator=generator)
            rows.append({
                "attack": attack.spec, "eps": scaled.eps, "alpha": scaled.alpha, "steps": scaled.steps,
                "budget_scale": scale, "test_acc": test_acc, "robust_acc": robust, "train_loss": train_loss,
            })
        return rows

    def _packet_tasks(self, space, model, x_base, lo, hi, epoch) -> list[PacketTask]:
        cfg = self.config
        dims = self.dims[space]
        a, b = (torch.as_tensor(v, dtype=torch.float64).cpu().expand(x_base.numel())[dims] for v in (lo, hi))
        chunk = cfg.packets.chunk or self._default_chunk(dims.numel())
        return [
            PacketTask(
                space, model, x_base, dims[i : i + chunk], a[i : i + chunk], b[i : i + chunk],
                cfg.packets.estimator, cfg.packets.nodes, cfg.packets.tol, cfg.packets.replicates, cfg.packets.loss_clip,
                seed=_chunk_seed(cfg.seed, epoch, space, i),
            )
            for i in range(0, dims.numel(), chunk)
        ]

    def _default_chunk(self, count: int) -> int:
        """CPU_CHUNK dimensions per task on the CPU; on a GPU one task per worker and space.

        A GPU runs a chunk's lines as one batch, and the piecewise walk takes as many
        sequential steps for 64 lines as for thousands: small chunks leave it idle.
        """
        if self.device.type == "cuda":
            return max(1, math.ceil(count / self.config.resources.workers))
        return CPU_CHUNK

    def _embeddings(self, epoch: int, generator: torch.Generator) -> dict[str, np.ndarray]:
        """Fig. 1 material: PCA of test features, clean and attacked, with predictions."""
        n = min(self.config.embed_points, self.data.x_test.shape[0])
        if n == 0:
            return {}
        x, y = self.data.x_test[:n], self.data.y_test[:n]
        x_adv = attacks.perturb(self.config.attacks[0], self.model, x, y, generator=generator)
        f = features.extract(self.model.features, torch.cat([x, x_adv]))
        with torch.no_grad():
            prob = torch.softmax(self.model.classifier(f), -1)
        centred = f - f[:n].mean(0)
        k = min(PCA_DIMS, *centred.shape)
        _, _, v = torch.linalg.svd(centred[:n], full_matrices=False)
        coords = (centred @ v[:k].T).float().cpu().numpy()  # (2n, k)
        conf, pred = prob.max(-1)
        return {
            "epoch": np.full(2 * n, epoch, np.int32),
            "kind": np.array(["clean"] * n + ["attacked"] * n),
            "point": np.tile(np.arange(n, dtype=np.int32), 2),
            "label": np.tile(y.cpu().numpy().astype(np.int32), 2),
            "pred": pred.cpu().numpy().astype(np.int32),
            "confidence": conf.cpu().numpy().astype(np.float32),
            "coords": list(coords),
        }


def _chunk_seed(seed: int, epoch: int, space: str, start: int) -> int:
    """Seed of one packet chunk, the same in every process (Python's str hash is salted per process)."""
    return zlib.crc32(f"{seed}/{epoch}/{space}/{start}".encode())


def _draw_dims(count: int, k: int | None, generator: torch.Generator, space: str) -> torch.Tensor:
    """K distinct dimensions out of `count`, sorted; all of them when k is None."""
    if k is None:
        return torch.arange(count)
    if k > count:
        raise UserError(f"dims={k} but the {space} space has only {count} dimensions: use dims={count} or dims=all")
    return torch.randperm(count, generator=generator)[:k].sort().values


def _check_finite(tasks: Sequence[PacketTask], results: Sequence[PacketStats], epoch: int) -> None:
    """Non-finite packet values on a real interval mean the network blew up: stop, naming the epoch.

    A feature that is constant over the training set has a = b and no packet; its NaN rows are kept.
    """
    for task, stats in zip(tasks, results, strict=True):
        real = (task.b > task.a)[:, None]
        if not bool(torch.isfinite(stats.sx * stats.sp)[real.expand_as(stats.sx)].all()):
            raise UserError(
                f"epoch {epoch}: non-finite packet values in {task.space} space (stage: packets); "
                "the network's loss overflowed: lower the learning rate (lr=...) or set loss_clip=C"
            )


def _packet_columns(tasks: Sequence[PacketTask], results: Sequence[PacketStats], epoch: int) -> dict[str, np.ndarray]:
    """Flatten per-chunk stats into `packets/` columns, one row per (space, class, dim)."""
    columns: dict[str, list[np.ndarray]] = {}
    for task, stats in zip(tasks, results, strict=True):
        D, C = stats.sx.shape
        part = {
            "epoch": np.full(D * C, epoch, np.int32),
            "space": np.array([task.space] * (D * C)),
            "class": np.tile(np.arange(C, dtype=np.int32), D),
            "dim": task.dims.repeat_interleave(C).numpy().astype(np.int64),
            "a": task.a.repeat_interleave(C).numpy(),
            "b": task.b.repeat_interleave(C).numpy(),
            **{k: getattr(stats, k).reshape(-1).cpu().numpy() for k in ("sx", "sp", "mean_x", "mean_p", "beta", "boundary_term", "bound")},
            "estimator": np.array([stats.estimator] * (D * C)),
            "nodes": stats.evaluations.repeat_interleave(C).numpy().astype(np.int32),  # network evaluations of the dim
            "err_sx": stats.err_sx.reshape(-1).numpy(),
            "err_sp": stats.err_sp.reshape(-1).numpy(),
            "flagged": stats.misses(task.tol, task.b - task.a).reshape(-1).numpy() & (task.b > task.a).repeat_interleave(C).numpy(),
        }
        for key, value in part.items():
            columns.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in columns.items()}
