"""The training step's arithmetic: bf16 autocast, channels_last, and the float32 packets beside them."""

from __future__ import annotations

import copy

import pytest
import torch

from raysweep.core import data, models, packets, train


def _epochs(arch: str, dataset: str, epochs: int, *, precision: str = "float32", channels_last: bool = False) -> tuple[list[float], torch.nn.Module]:
    ds = data.load(dataset)
    recipe = train.recipe_for(arch)
    torch.manual_seed(0)
    model = models.build(arch, num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = train.make_optimizer(model, recipe, train.steps_per_epoch(512, recipe.batch_size) * epochs)
    generator = torch.Generator().manual_seed(0)
    losses = [
        train.train_epoch(model, optimizer, scheduler, ds.x_train, ds.y_train, recipe, generator=generator, epoch=e,
                          precision=precision, channels_last=channels_last)
        for e in range(1, epochs + 1)
    ]
    return losses, model


def test_bf16_step_learns_and_keeps_float32_weights() -> None:
    losses, model = _epochs("mnist_conv3", "synthetic", 4, precision="bf16")
    assert losses[-1] < 0.3 * losses[0]
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_and_float32_steps_agree_to_bf16_rounding() -> None:
    (bf16,), _ = _epochs("mnist_conv3", "synthetic", 1, precision="bf16")
    (fp32,), _ = _epochs("mnist_conv3", "synthetic", 1)
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=2e-2)


def test_channels_last_changes_the_layout_not_the_arithmetic() -> None:
    ds = data.load("synthetic:3x32x32")
    torch.manual_seed(0)
    plain = models.build("cifar_conv4", num_classes=10)
    converted = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    conv = next(m for m in converted.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x, y = ds.x_train[:64], ds.y_train[:64]
    for model, batch in ((plain, x), (converted, x.contiguous(memory_format=torch.channels_last))):
        torch.nn.functional.cross_entropy(model(batch), y).backward()
    for p, q in zip(plain.parameters(), converted.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
    (nchw,), _ = _epochs("cifar_conv4", "synthetic:3x32x32", 1)
    (nhwc,), _ = _epochs("cifar_conv4", "synthetic:3x32x32", 1, channels_last=True)
    assert nhwc == pytest.approx(nchw, rel=1e-4)


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match="use one of float32, bf16"):
        _epochs("mnist_conv3", "synthetic", 1, precision="fp16")


@pytest.mark.parametrize(
    ("device", "arch", "requested", "images", "expected"),
    [
        ("cpu", "resnet9", "auto", True, ("float32", False)),
        ("cpu", "mnist_conv3", "bf16", True, ("bf16", False)),
        ("cuda", "resnet9", "auto", True, ("bf16", True)),
        ("cuda", "mnist_conv3", "auto", True, ("float32", True)),
        ("cuda", "pkg.mod:Net", "auto", True, ("float32", True)),
        ("cuda", "resnet9", "float32", True, ("float32", True)),
        ("cuda", "mnist_conv3", "bf16", False, ("bf16", False)),
    ],
)
def test_step_arithmetic_takes_bf16_where_the_recipe_says_and_channels_last_on_a_gpu(
    device: str, arch: str, requested: str, images: bool, expected: tuple
) -> None:
    assert train.step_arithmetic(torch.device(device), requested, train.recipe_for(arch), images=images) == expected


class _FlagProbe(torch.nn.Linear):
    """A linear net that notes whether TF32 was allowed while it ran."""

    seen: set[bool]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
        return super().forward(x)


def test_packets_run_in_true_float32_and_the_flags_come_back() -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        probe = _FlagProbe(4, 3)
        probe.seen = set()
        packets.packet_stats(probe, torch.rand(4), [0, 2], 0.0, 1.0, estimator="gauss", nodes=4)
        assert probe.seen == {False}
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
