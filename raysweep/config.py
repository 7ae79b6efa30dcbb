"""What a run measures: frozen configs, the presets, and `key=value` overrides.

A run is a grid of trials, one per (arch, dataset, seed). `arch` and `dataset`
pair up position by position (a single value pairs with every entry of the
other); seeds multiply the grid.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field

from raysweep.errors import UserError

SPACES = ("pixel", "feature")
ESTIMATORS = ("auto", "piecewise", "gauss", "mc")
PRECISIONS = ("auto", "float32", "bf16")
EXECUTORS = ("ray", "local")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # the devices a trial can run on (checked without importing torch)
PAPER_PGD = "pgd:eps=8/255,alpha=2/255,steps=4"  # paper Fig. 2
MNIST_PGD = "pgd:eps=0.1,alpha=0.025,steps=4"  # paper Fig. 1


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs. Training fields left None take the architecture's recipe."""

    arch: str = "mnist_conv3"  # built-in name or import path `package.module:Class`
    dataset: str = "digits"  # digits | synthetic[:CxHxW] | mnist | fashion-mnist | cifar10
    data_root: str | None = None  # folder of the standard files (None: raysweep's cache folder)
    download: bool = True  # let torchvision download missing files where the network allows
    seed: int = 0  # model init, data order, dimension draw, Monte-Carlo nodes
    epochs: int = 5
    limit_train: int | None = None  # keep the first n training images (quick runs)
    limit_test: int | None = None  # keep the first n test images
    # training recipe overrides (None: the architecture's documented recipe, see train.RECIPES)
    lr: float | None = None  # peak learning rate
    batch_size: int | None = None  # images per step
    weight_decay: float | None = None
    precision: str = "auto"  # training step: auto (float32; bf16 autocast on a GPU where the recipe says it pays: resnet9) | float32 | bf16
    # attacks, joined by '+'; budgets in pixel units (feature space scales them, see features.py)
    attacks: str = PAPER_PGD
    # neural packets
    spaces: str = "pixel,feature"  # which spaces to measure, comma-separated
    dims: int | None = 32  # K sampled dimensions per space, drawn once per trial; None or `all`: every one
    estimator: str = "auto"  # auto (piecewise for ReLU/MaxPool nets with few kinks per line, else gauss; gauss whenever loss_clip is set) | piecewise | gauss | mc
    nodes: int = 32  # evaluations per dimension
    replicates: int = 8  # Monte-Carlo batches behind the standard errors
    loss_clip: float | None = None  # clip the loss at C (paper supp. footnote 1)
    chunk: int | None = None  # dimensions per packet task, all classes riding along (None: 64 on the CPU; on a GPU a space's dimensions split evenly over the workers)
    # feature space (paper supp. 2.2)
    head_epochs: int = 10  # epochs to retrain the re-initialised head on frozen features
    # Fig. 1 material
    embed_points: int = 512  # test points whose features are kept per epoch (0: none)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads per process (None: torch's default); pin it for bitwise-equal reruns
    # Ray executor: each trial reserves its own bundle plus `workers` bundles for its packet tasks
    workers: int = 1  # packet-task bundles per trial
    gpus: float | None = None  # GPU share of each bundle (None: 1/(workers+1) where the cluster has GPUs, else 0)

    @property
    def name(self) -> str:
        """Trial name: safe as one path component, unique within a grid."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.arch}-{self.dataset}-s{self.seed}")

    @property
    def space_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.spaces.split(",") if s.strip())

    @property
    def attack_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.attacks.split("+") if s.strip())

    def __post_init__(self) -> None:
        if not self.attack_list:
            raise UserError("attacks= is empty: give at least one attack, e.g. attacks=pgd:eps=8/255,alpha=2/255,steps=4 "
                            "(several joined by '+')")
        bad = [s for s in self.space_list if s not in SPACES]
        if bad or not self.space_list:
            raise UserError(f"spaces={self.spaces!r}: use a comma list of {', '.join(SPACES)}")
        for key in ("epochs", "nodes", "replicates", "head_epochs", "workers"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)}: must be at least 1")
        for key in ("dims", "limit_train", "limit_test", "batch_size", "threads", "chunk"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key}={value}: must be at least 1 (or leave it unset)")
        if self.estimator not in ESTIMATORS:
            raise UserError(f"estimator={self.estimator!r}: use one of {', '.join(ESTIMATORS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision={self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.seed < 0:
            raise UserError(f"seed={self.seed}: must be 0 or more")
        if self.estimator == "mc" and (self.replicates < 2 or self.nodes % self.replicates):
            raise UserError(
                f"estimator=mc with nodes={self.nodes}, replicates={self.replicates}: the standard errors need "
                "replicates >= 2 that divide nodes, e.g. nodes=32 replicates=8"
            )
        if self.embed_points < 0:
            raise UserError(f"embed_points={self.embed_points}: must be 0 or more")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"lr={self.lr}: must be positive")
        if self.loss_clip is not None and not self.loss_clip > 0:
            raise UserError(f"loss_clip={self.loss_clip}: the loss is clipped at a positive constant, e.g. loss_clip=5")
        if self.estimator == "piecewise" and self.loss_clip is not None:
            raise UserError(f"estimator=piecewise with loss_clip={self.loss_clip}: the walk does not locate the clip's "
                            "kink; use estimator=gauss (or auto, which takes gauss when the loss is clipped)")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise UserError(f"weight_decay={self.weight_decay}: must be 0 or more")
        if not DEVICE.fullmatch(self.device):
            raise UserError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.gpus is not None and not 0 <= self.gpus <= 1:
            raise UserError(f"gpus={self.gpus}: a bundle's GPU share lies in [0, 1]")


@dataclass(frozen=True)
class SweepConfig:
    """A run: the grid of trials."""

    arch: tuple[str, ...]
    dataset: tuple[str, ...]
    seed: tuple[int, ...]
    trial: TrialConfig = field(default_factory=TrialConfig)  # every other field

    def trials(self) -> list[TrialConfig]:
        if len(self.arch) != len(self.dataset) and 1 not in (len(self.arch), len(self.dataset)):
            raise UserError(
                f"arch has {len(self.arch)} entries and dataset {len(self.dataset)}: they pair up by position, "
                "so give both the same count, or one of them a single value"
            )
        n = max(len(self.arch), len(self.dataset))
        pairs = zip(self.arch * (n // len(self.arch)), self.dataset * (n // len(self.dataset)))
        trials = [dataclasses.replace(self.trial, arch=a, dataset=d, seed=s) for a, d in pairs for s in self.seed]
        names = [t.name for t in trials]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"the grid holds trial {twice[0]} twice: give each seed, and each (arch, dataset) pair, once")
        return trials


PRESETS: dict[str, dict[str, str]] = {
    # The quick demo: real handwritten digits, offline, about a minute on 2 CPU cores.
    "demo": {
        "arch": "mnist_conv3",
        "dataset": "digits",
        "seed": "0",
        "epochs": "20",
        "attacks": f"{MNIST_PGD}+{PAPER_PGD}",
        "dims": "64",
        "head_epochs": "5",
        "embed_points": "256",
    },
    # The paper's three networks and settings (paper Fig. 1 and 2), packets over every dimension.
    "paper": {
        "arch": "mnist_conv3,cifar_conv4,resnet9",
        "dataset": "mnist,cifar10,cifar10",
        "seed": "0",
        "epochs": "50",
        "attacks": f"{PAPER_PGD}+{MNIST_PGD}",
        "dims": "all",
        "embed_points": "1000",
    },
    # A seconds-long smoke test on generated images.
    "smoke": {
        "arch": "mnist_conv3",
        "dataset": "synthetic",
        "seed": "0",
        "epochs": "2",
        "dims": "4",
        "nodes": "8",
        "head_epochs": "2",
        "embed_points": "32",
    },
}

GRID_KEYS = ("arch", "dataset", "seed")
RUN_KEYS = ("storage",)  # where the run directory lives (a path or a pyarrow filesystem URI); same as --out


def trial_configs(run_manifest: dict) -> list[TrialConfig]:
    """The trials a run's manifest lists."""
    return [TrialConfig(**cfg) for cfg in run_manifest["trials"].values()]


def parse_overrides(items: typing.Iterable[str]) -> dict[str, str]:
    """`key=value` strings to a dict; unknown keys name the valid ones."""
    valid = GRID_KEYS + RUN_KEYS + tuple(f.name for f in dataclasses.fields(TrialConfig) if f.name not in GRID_KEYS)
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value, e.g. epochs=10")
        if key not in valid:
            raise UserError(f"unknown key {key!r} in {item!r}; valid keys: {', '.join(valid)}")
        out[key] = value.strip()
    return out


def resolve(preset: str, overrides: dict[str, str]) -> SweepConfig:
    """The preset's values with the overrides on top, typed and checked."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {k: v for k, v in {**PRESETS[preset], **overrides}.items() if k not in RUN_KEYS}
    hints = typing.get_type_hints(TrialConfig)
    trial_fields = {k: _convert(k, v, hints[k]) for k, v in values.items() if k not in GRID_KEYS}
    grid = {k: tuple(s.strip() for s in values.get(k, "").split(",") if s.strip()) for k in GRID_KEYS}
    for key in GRID_KEYS:
        if not grid[key]:
            raise UserError(f"{key}= is empty: give at least one value")
    seeds = tuple(_convert("seed", s, int) for s in grid["seed"])
    return SweepConfig(
        arch=grid["arch"], dataset=grid["dataset"], seed=seeds, trial=TrialConfig(**trial_fields)
    )


def _convert(key: str, text: str, kind: object) -> object:
    """Parse one override by the field's type; `none`/`all` unset an optional field (an empty value
    is refused: `dims=` must not quietly mean every dimension)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if text == "":
            unset = "dims=all for every dimension" if key == "dims" else f"{key}=none to unset it"
            raise UserError(f"{key}= is empty: give a value, or {unset}")
        if text.lower() in ("none", "all"):
            return None
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)  # type: ignore[operator]
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        example = {"int": "a whole number, e.g. 3", "float": "a number, e.g. 0.001", "bool": "true or false"}.get(name, name)
        raise UserError(f"{key}={text!r} is not a valid {name}: give {example}") from None
