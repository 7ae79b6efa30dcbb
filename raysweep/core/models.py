"""The conv nets of the paper (supplementary Fig. 1) and pluggable architectures.

Every model is ``classifier(features(x))`` with two submodules ``features`` and
``classifier``:

* inputs are pixels in [0, 1]; the dataset normalisation is the first layer of
  ``features`` (`Normalize`), so attack budgets and box constraints stay in
  pixel units;
* ``features(x)`` is flat, shape ``(n, d)``, because feature-space packets and
  attacks treat each feature as one coordinate;
* every ReLU is out-of-place so forward-mode AD (``torch.func.jvp``) works.

``build("package.module:ClassName")`` plugs in any ``nn.Module`` class that
follows the same contract.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from raysweep.errors import UserError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with the model in eval mode, then restore every module's flag.

    Flags are restored per module, not with ``model.train(flag)``, so a submodule
    deliberately kept in another mode (e.g. frozen BatchNorm) keeps it.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def exact_float32() -> Iterator[None]:
    """Run the block with TF32 off for convolutions and matrix products, then restore the flags.

    PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa, ~1e-3 relative error) by
    default on Ampere and later GPUs; packet slopes need true float32 (SPEC 5: "packets
    stay in float32"). No effect on the CPU.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers, not parameters."""

    piecewise_affine = True  # affine: the piecewise packet estimator may walk through it

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Net(nn.Module):
    """A model split in two: ``forward(x) = classifier(features(x))``, nothing else."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _mnist_conv3(num_classes: int) -> Net:
    """1x28x28 -> 16x9x9 -> 64x5x5 -> 256x3x3 = 2304 features -> linear head."""
    features = nn.Sequential(
        Normalize(MNIST_MEAN, MNIST_STD),
        nn.Conv2d(1, 16, kernel_size=5, stride=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 64, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 256, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )
    return Net(features, nn.Linear(2304, num_classes))


def _cifar_conv4(num_classes: int) -> Net:
    """3x32x32 -> 32x15x15 -> 64x7x7 -> 128x3x3 -> 256x1x1 = 256 features -> MLP head."""
    features = nn.Sequential(
        Normalize(CIFAR10_MEAN, CIFAR10_STD),
        nn.Conv2d(3, 32, kernel_size=3, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 128, kernel_size=3, stride=2),
        nn.ReLU(),
        nn.Conv2d(128, 256, kernel_size=3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
    )
    classifier = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, num_classes))
    return Net(features, classifier)


def _conv_bn(c_in: int, c_out: int, *, pool: bool = False) -> nn.Sequential:
    """Conv k3 p1, BatchNorm, ReLU, then an optional 2x2 max-pool.

    The conv has no bias because the BatchNorm shift that follows would absorb it.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _resnet9(num_classes: int) -> Net:
    """ResNet-9: 3x32x32 -> 512x4x4 = 8192 features -> max-pool 4 + linear head."""
    features = nn.Sequential(
        Normalize(CIFAR10_MEAN, CIFAR10_STD),
        _conv_bn(3, 64),
        _conv_bn(64, 128, pool=True),
        Residual(nn.Sequential(_conv_bn(128, 128), _conv_bn(128, 128))),
        _conv_bn(128, 256, pool=True),
        _conv_bn(256, 512, pool=True),
        Residual(nn.Sequential(_conv_bn(512, 512), _conv_bn(512, 512))),
        nn.Flatten(),
    )
    # The head pools spatially, so it first restores the map that features flattened.
    classifier = nn.Sequential(
        nn.Unflatten(1, (512, 4, 4)),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
    return Net(features, classifier)


class _BuiltIn(NamedTuple):
    make: Callable[[int], Net]
    input_shape: tuple[int, int, int]


_BUILT_INS: dict[str, _BuiltIn] = {
    "mnist_conv3": _BuiltIn(_mnist_conv3, (1, 28, 28)),
    "cifar_conv4": _BuiltIn(_cifar_conv4, (3, 32, 32)),
    "resnet9": _BuiltIn(_resnet9, (3, 32, 32)),
}

ARCHITECTURES: tuple[str, ...] = tuple(_BUILT_INS)


def _built_in(name: str) -> _BuiltIn:
    try:
        return _BUILT_INS[name]
    except KeyError:
        raise UserError(
            f"unknown architecture {name!r}: use one of {', '.join(ARCHITECTURES)} "
            "or an import path 'package.module:ClassName'"
        ) from None


def _is_import_path(name: str) -> bool:
    return ":" in name


def input_shape(name: str) -> tuple[int, int, int] | None:
    """The (C, H, W) input a built-in architecture needs; None for an import path."""
    if _is_import_path(name):
        return None
    return _built_in(name).input_shape


def split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(features, classifier)`` of a model; UserError if it lacks either submodule."""
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if not isinstance(features, nn.Module) or not isinstance(classifier, nn.Module):
        raise UserError(
            f"model {type(model).__name__} must have nn.Module attributes 'features' and "
            "'classifier' with forward(x) = classifier(features(x))"
        )
    return features, classifier


def _import_class(path: str) -> Callable[..., object]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".")):
        raise UserError(f"bad import path {path!r}: write it as 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import module {module_name!r} ({exc}): put it on PYTHONPATH or fix the name"
        ) from exc
    cls = getattr(module, attr, None)
    if not callable(cls):
        raise UserError(f"module {module_name!r} has no class {attr!r}: fix the name after ':'")
    return cls


def _accepts_num_classes(cls: Callable[..., object]) -> bool:
    try:
        return "num_classes" in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # builtins without a readable signature
        return False


def _build_plugin(path: str, num_classes: int) -> nn.Module:
    cls = _import_class(path)
    model = cls(num_classes=num_classes) if _accepts_num_classes(cls) else cls()
    if not isinstance(model, nn.Module):
        raise UserError(
            f"{path} built a {type(model).__name__}, not a torch.nn.Module: "
            "name an nn.Module class with 'features' and 'classifier' submodules"
        )
    split(model)
    return model


def build(name_or_import_path: str, num_classes: int = 10) -> nn.Module:
    """A fresh model: a built-in name (see ARCHITECTURES) or 'package.module:ClassName'.

    A plugin class is called with ``num_classes=num_classes`` when its constructor
    takes that argument, else with no arguments; it must build an ``nn.Module``
    with ``features`` and ``classifier`` submodules.
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if _is_import_path(name_or_import_path):
        return _build_plugin(name_or_import_path, num_classes)
    return _built_in(name_or_import_path).make(num_classes)
