"""Built-in architectures and the import-path plugin contract of raysweep.core.models."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from raysweep.core import models
from raysweep.errors import UserError

FEATURE_SIZES = {"mnist_conv3": 2304, "cifar_conv4": 256, "resnet9": 8192}
PLUGIN_MODULE = "raysweep_test_plugin_nets"
PLUGIN_SOURCE = textwrap.dedent(
    """
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Flatten()
            self.classifier = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x))


    class NoArgNet(TinyNet):
        def __init__(self):
            super().__init__(num_classes=3)


    class Headless(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Linear(4, num_classes)


    class NotAModule:
        features = nn.Flatten()
        classifier = nn.Linear(4, 2)
    """
)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plugin module importable by name for the duration of one test."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield PLUGIN_MODULE
    sys.modules.pop(PLUGIN_MODULE, None)


def _batch(name: str, n: int = 2) -> torch.Tensor:
    shape = models.input_shape(name)
    assert shape is not None
    return torch.rand(n, *shape)


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_builtin_maps_batch_to_logits_and_flat_features(name: str) -> None:
    model = models.build(name).eval()
    x = _batch(name)
    assert model.features(x).shape == (2, FEATURE_SIZES[name])
    assert model(x).shape == (2, 10)


def test_architectures_and_input_shapes_are_listed() -> None:
    assert models.ARCHITECTURES == ("mnist_conv3", "cifar_conv4", "resnet9")
    assert models.input_shape("mnist_conv3") == (1, 28, 28)
    assert models.input_shape("cifar_conv4") == (3, 32, 32)
    assert models.input_shape("resnet9") == (3, 32, 32)
    assert models.input_shape("some.module:Net") is None


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_forward_is_exactly_classifier_of_features(name: str) -> None:
    model = models.build(name).eval()
    features, classifier = models.split(model)
    x = _batch(name)
    with torch.no_grad():
        assert torch.equal(model(x), classifier(features(x)))


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_normalisation_is_a_buffer_layer_inside_features(name: str) -> None:
    model = models.build(name).eval()
    normalize = model.features[0]
    assert isinstance(normalize, models.Normalize)
    assert {"features.0.mean", "features.0.std"} <= {n for n, _ in model.named_buffers()}
    assert not any(n.startswith("features.0.") for n, _ in model.named_parameters())
    # Raw pixels go straight in: no external transform is needed.
    x = torch.full_like(_batch(name), 0.5)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("mnist_conv3", models.MNIST_MEAN, models.MNIST_STD),
        ("cifar_conv4", models.CIFAR10_MEAN, models.CIFAR10_STD),
        ("resnet9", models.CIFAR10_MEAN, models.CIFAR10_STD),
    ],
)
def test_normalize_uses_the_dataset_statistics(
    name: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    normalize = models.build(name).features[0]
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x = mean_t + std_t * torch.ones(1, len(mean), 2, 2)
    torch.testing.assert_close(normalize(x), torch.ones_like(x))


# torch warns about its own torch.jit use the first time forward-mode AD runs.
_TORCH_JIT_WARNING = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning"
)


@_TORCH_JIT_WARNING
@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_forward_mode_jvp_matches_reverse_mode(name: str) -> None:
    model = models.build(name).double().eval()
    x = _batch(name).double()
    v = torch.randn_like(x)
    u = torch.randn(2, 10, dtype=torch.float64)
    _, jv = torch.func.jvp(model, (x,), (v,))
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(x_req) * u).sum(), x_req)
    # u . (J v) computed forward equals (u^T J) . v computed backward.
    torch.testing.assert_close((u * jv).sum(), (grad * v).sum(), rtol=1e-9, atol=1e-9)


@_TORCH_JIT_WARNING
def test_jvp_matches_central_finite_difference() -> None:
    model = models.build("cifar_conv4").double().eval()
    x = _batch("cifar_conv4").double()
    v = torch.randn_like(x)
    _, jv = torch.func.jvp(model, (x,), (v,))
    h = 1e-6
    with torch.no_grad():
        finite_difference = (model(x + h * v) - model(x - h * v)) / (2 * h)
    torch.testing.assert_close(jv, finite_difference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_relus_are_not_inplace(name: str) -> None:
    relus = [m for m in models.build(name).modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_num_classes_sets_the_output_width(name: str) -> None:
    model = models.build(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(_batch(name)).shape == (2, 7)


def test_num_classes_below_one_is_a_user_error() -> None:
    with pytest.raises(UserError, match="num_classes must be at least 1"):
        models.build("mnist_conv3", num_classes=0)


def test_unknown_name_lists_builtins_and_import_form() -> None:
    listing = r"mnist_conv3, cifar_conv4, resnet9 or an import path 'package\.module:ClassName'"
    with pytest.raises(UserError, match=listing):
        models.build("vgg16")
    with pytest.raises(UserError, match="unknown architecture 'vgg16'"):
        models.input_shape("vgg16")


def test_plugin_class_gets_num_classes(plugin_path: str) -> None:
    model = models.build(f"{plugin_path}:TinyNet", num_classes=5)
    features, classifier = models.split(model)
    assert isinstance(features, nn.Flatten)
    assert model(torch.rand(2, 1, 2, 2)).shape == (2, 5)


def test_plugin_class_without_num_classes_is_built_without_args(plugin_path: str) -> None:
    model = models.build(f"{plugin_path}:NoArgNet", num_classes=5)
    assert model(torch.rand(2, 4)).shape == (2, 3)


def test_plugin_without_features_and_classifier_is_a_user_error(plugin_path: str) -> None:
    with pytest.raises(UserError, match="nn.Module attributes 'features' and 'classifier'"):
        models.build(f"{plugin_path}:Headless")


def test_plugin_that_is_not_a_module_is_a_user_error(plugin_path: str) -> None:
    with pytest.raises(UserError, match="not a torch.nn.Module: name an nn.Module class"):
        models.build(f"{plugin_path}:NotAModule")


def test_plugin_missing_class_is_a_user_error(plugin_path: str) -> None:
    with pytest.raises(UserError, match=f"module '{plugin_path}' has no class 'Missing'"):
        models.build(f"{plugin_path}:Missing")


def test_unimportable_plugin_module_names_the_module() -> None:
    with pytest.raises(UserError, match="cannot import module 'no_such_pkg_xyz.nets'"):
        models.build("no_such_pkg_xyz.nets:Net")


@pytest.mark.parametrize("path", [":Net", "pkg.mod:", ":"])
def test_incomplete_import_path_is_a_user_error(path: str) -> None:
    with pytest.raises(UserError, match="write it as 'package.module:ClassName'"):
        models.build(path)
