"""What one trial measures: one frozen config per concern, each checked when it is built.

A `TrialConfig` is made of parts: the data, the training, the attacks, the packets,
the Fig. 1 points and the resources. Plain Python (the attacks are `threat.Attack`
specs), so a bad value fails before torch loads; users set the fields flat, as
`key=value` (`run.config`).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field

from raysweep.choices import AUTO, ESTIMATORS, PRECISIONS, SPACES, mc_problem, safe_name
from raysweep.core.regime import STANDARD, parse_regime
from raysweep.core.threat import PAPER_PGD, Attack, parse_attack
from raysweep.errors import UserError

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # the devices a trial can run on (checked without importing torch)


def _at_least(owner: object, minimum: int, *keys: str) -> None:
    for key in keys:
        value = getattr(owner, key)
        if value is not None and value < minimum:
            unset = " (or leave it unset)" if _optional(type(owner), key) else ""
            raise UserError(f"{key}={value}: must be at least {minimum}{unset}")


def _optional(cls: type, key: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(cls)[key])


@dataclass(frozen=True)
class DataConfig:
    """Which images, from where."""

    dataset: str = "digits"  # digits | synthetic[:CxHxW] | mnist | fashion-mnist | cifar10
    data_root: str | None = None  # folder of the standard files (None: raysweep's cache folder)
    download: bool = True  # let torchvision download missing files where the network allows
    limit_train: int | None = None  # keep the first n training images (quick runs)
    limit_test: int | None = None  # keep the first n test images

    def __post_init__(self) -> None:
        _at_least(self, 1, "limit_train", "limit_test")


@dataclass(frozen=True)
class TrainConfig:
    """How the network trains. Fields left None take the architecture's recipe (`core.train.RECIPES`)."""

    epochs: int = 5
    lr: float | None = None  # peak learning rate
    batch_size: int | None = None  # images per step
    weight_decay: float | None = None
    precision: str = AUTO  # training step: auto (float32; bf16 autocast on a GPU where the recipe says it pays: resnet9) | float32 | bf16
    training: str = STANDARD  # regime: standard | pgd:eps=..,alpha=..,steps=.. (Madry) | trades:eps=..,alpha=..,steps=..,beta=.. (Zhang)

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "batch_size")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"lr={self.lr}: must be positive")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise UserError(f"weight_decay={self.weight_decay}: must be 0 or more")
        if self.precision not in (AUTO, *PRECISIONS):
            raise UserError(f"precision={self.precision!r}: use one of {', '.join((AUTO, *PRECISIONS))}")
        parse_regime(self.training)


@dataclass(frozen=True)
class PacketConfig:
    """Which packets, and how they are integrated (SPEC 1.3, 1.5)."""

    spaces: tuple[str, ...] = SPACES  # which spaces to measure; key=value takes a comma list
    dims: int | None = 32  # K sampled dimensions per space, drawn once per trial; None (`all`): every one
    estimator: str = AUTO  # auto (piecewise for ReLU/MaxPool nets with few kinks per line, else gauss; gauss whenever loss_clip is set) | piecewise | gauss | mc
    nodes: int = 32  # evaluations per dimension (auto: gauss starts here and doubles up to 512 to meet tol)
    tol: float = 1e-2  # relative error on sx and sp auto refines to; pairs whose estimate misses it are flagged
    replicates: int = 8  # Monte-Carlo batches behind the standard errors
    loss_clip: float | None = None  # clip the loss at C (paper supp. footnote 1)
    chunk: int | None = None  # dimensions per packet task, all classes riding along (None: 64 on the CPU; on a GPU a space's dimensions split evenly over the workers)
    head_epochs: int = 10  # feature space (paper supp. 2.2): epochs to retrain the re-initialised head on frozen features

    def __post_init__(self) -> None:
        bad = [s for s in self.spaces if s not in SPACES]
        if bad or not self.spaces or len(set(self.spaces)) != len(self.spaces):
            raise UserError(f"spaces={','.join(self.spaces)!r}: use a comma list of {', '.join(SPACES)}, each once")
        _at_least(self, 1, "dims", "nodes", "replicates", "chunk", "head_epochs")
        if self.estimator not in (AUTO, *ESTIMATORS):
            raise UserError(f"estimator={self.estimator!r}: use one of {', '.join((AUTO, *ESTIMATORS))}")
        if self.estimator == "mc" and (problem := mc_problem(self.nodes, self.replicates)):
            raise UserError(f"estimator=mc: {problem}, e.g. nodes=32 replicates=8")
        if not self.tol > 0:
            raise UserError(f"tol={self.tol}: a relative error tolerance is positive, e.g. tol=0.01")
        if self.loss_clip is not None and not self.loss_clip > 0:
            raise UserError(f"loss_clip={self.loss_clip}: the loss is clipped at a positive constant, e.g. loss_clip=5")
        if self.estimator == "piecewise" and self.loss_clip is not None:
            raise UserError(f"estimator=piecewise with loss_clip={self.loss_clip}: the walk does not locate the clip's "
                            "kink; use estimator=gauss (or auto, which takes gauss when the loss is clipped)")


@dataclass(frozen=True)
class Resources:
    """Where a trial runs. The Ray executor gives each trial its own bundle plus `workers` bundles for its packet tasks."""

    device: str = AUTO  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads per process (None: torch's default); pin it for bitwise-equal reruns
    workers: int = 1  # packet-task bundles per trial
    gpus: float | None = None  # GPU share of each bundle (None: 1/(workers+1) where the cluster has GPUs, else 0)

    def __post_init__(self) -> None:
        if not DEVICE.fullmatch(self.device):
            raise UserError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        _at_least(self, 1, "threads", "workers")
        if self.gpus is not None and not 0 <= self.gpus <= 1:
            raise UserError(f"gpus={self.gpus}: a bundle's GPU share lies in [0, 1]")


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs."""

    arch: str = "mnist_conv3"  # built-in name or import path `package.module:Class`
    seed: int = 0  # model init, data order, dimension draw, Monte-Carlo nodes
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attacks: tuple[Attack, ...] = (parse_attack(PAPER_PGD),)  # budgets in pixel units (feature space scales them, see core.features)
    packets: PacketConfig = field(default_factory=PacketConfig)
    embed_points: int = 512  # Fig. 1 material: test points whose features are kept per epoch (0: none)
    resources: Resources = field(default_factory=Resources)
    swept: tuple[str, ...] = ()  # the keys its sweep varies beyond arch, dataset, seed: columns of epochs/
    tag: str = ""  # their values, short and path-safe, as the sweep names them (`run.config.SweepConfig`)

    def __post_init__(self) -> None:
        if not self.attacks:
            raise UserError("attacks= is empty: give at least one attack, e.g. attacks=pgd:eps=8/255,alpha=2/255,steps=4 "
                            "(several joined by '+')")
        if self.seed < 0:
            raise UserError(f"seed={self.seed}: must be 0 or more")
        if self.embed_points < 0:
            raise UserError(f"embed_points={self.embed_points}: must be 0 or more")

    @property
    def name(self) -> str:
        """Trial name: safe as one path component, unique within a grid."""
        return safe_name(f"{self.arch}-{self.data.dataset}-s{self.seed}" + (f"-{self.tag}" if self.tag else ""))

    @property
    def keeps_embeddings(self) -> bool:
        """Whether each epoch writes Fig. 1 points (`embeddings/`)."""
        return self.embed_points > 0
