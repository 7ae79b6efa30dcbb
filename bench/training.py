"""Training images/s per architecture with the project's own recipe and step (SPEC 5, third target).

    python bench/training.py [--threads N] [--smoke-test]

Per architecture: raysweep.core.train's recipe (`recipe_for`, unchanged), `make_optimizer` and `train_epoch`
with the recipe's batch size and augmentation, on generated images of the arch's input shape.
- CPU: 512 training images per pass; one untimed pass, then the median of several gives images/s, and one
  epoch of the real data set (60,000 MNIST or 50,000 CIFAR-10 images) is extrapolated from it.
- GPU (where one is visible): whole epochs of the real size (`synthetic:CxHxW:N:16`), one untimed, then the
  median of three, in float32 and in bf16 autocast, both with channels_last as trials feed a GPU
  (`train.step_arithmetic`); these epoch times are measured, not extrapolated.
Then the training regimes (SPEC 7) against standard training, per architecture on the CPU: the same
passes under `training=` pgd and trades at the paper's MNIST budget (eps 0.1, 4 steps), each a
multiple of the standard pass (crafting costs about `steps` extra forward and backward passes).
"""

from __future__ import annotations

import torch

from common import parser, print_table, setup, timed
from raysweep.core import data, models, train
from raysweep.core.regime import MNIST_TRADES, STANDARD, Regime, parse_regime
from raysweep.core.threat import MNIST_PGD

REGIMES = {"standard": Regime(STANDARD), "pgd": parse_regime(MNIST_PGD), "trades": parse_regime(MNIST_TRADES)}

PASSES = {"mnist_conv3": 16, "cifar_conv4": 16, "resnet9": 3}  # timed passes over the 512 images, CPU
GPU_EPOCHS = 3  # timed whole epochs on a GPU
EPOCH_IMAGES = {"mnist_conv3": 60_000, "cifar_conv4": 50_000, "resnet9": 50_000}  # MNIST, CIFAR-10
SMOKE_IMAGES = 32  # images per pass with --smoke-test


def pass_seconds(arch: str, device: torch.device, dataset: str, passes: int, precision: str,
                 regime: Regime = Regime(STANDARD)) -> tuple[float, int, int, bool]:
    """Median seconds of one train_epoch pass over `dataset`, images per pass, batch size, channels_last."""
    torch.manual_seed(0)
    recipe = train.recipe_for(arch)
    ds = data.load(dataset, device=device)
    n = ds.x_train.shape[0]
    steps = train.steps_per_epoch(n, recipe.batch_size)
    precision, channels_last = train.step_arithmetic(device, precision, recipe)
    model = models.build(arch, num_classes=10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = train.make_optimizer(model, recipe, steps * (passes + 1))  # +1: the warm-up pass
    generator = torch.Generator().manual_seed(0)  # on the CPU, as the trial's
    seconds, _ = timed(
        lambda: train.train_epoch(
            model, optimizer, scheduler, ds.x_train, ds.y_train, recipe, generator=generator, epoch=0,
            precision=precision, channels_last=channels_last, regime=regime,
        ),
        repeats=passes,
    )
    batch = min(recipe.batch_size, n)
    return seconds, steps * batch, batch, channels_last


def main() -> None:
    args = parser(__doc__).parse_args()
    setup(args.threads)
    shapes = {arch: "x".join(map(str, models.input_shape(arch))) for arch in PASSES}
    cpu = torch.device("cpu")
    runs = [(arch, cpu, f"synthetic:{shapes[arch]}", passes, "float32") for arch, passes in PASSES.items()]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        runs += [
            (arch, gpu, f"synthetic:{shapes[arch]}:{EPOCH_IMAGES[arch]}:16", GPU_EPOCHS, precision)
            for arch in PASSES
            for precision in ("float32", "bf16")
        ]
    rows = []
    for arch, device, dataset, passes, precision in runs:
        if args.smoke_test:
            passes, dataset = 1, f"synthetic:{shapes[arch]}:{SMOKE_IMAGES}:16"
        seconds, images, batch, channels_last = pass_seconds(arch, device, dataset, passes, precision)
        rate = images / seconds
        whole = images >= EPOCH_IMAGES[arch] - batch  # a real-sized epoch, less the dropped short batch
        epoch = f"{seconds:.2f}" if whole else f"{EPOCH_IMAGES[arch] / rate:.1f} (extrapolated)"
        arithmetic = precision + (" + channels_last" if channels_last else "")
        rows.append([arch, device.type, arithmetic, str(batch), str(images * passes), f"{rate:.0f}", epoch])
    print_table(["arch", "device", "arithmetic", "batch", "images timed", "images/s", "epoch s"], rows)
    print()
    rows = []
    for arch, passes in PASSES.items():
        dataset = f"synthetic:{shapes[arch]}:{SMOKE_IMAGES}:16" if args.smoke_test else f"synthetic:{shapes[arch]}"
        passes = 1 if args.smoke_test else max(1, passes // 4)
        base = None
        for name, regime in REGIMES.items():
            seconds, images, _, _ = pass_seconds(arch, cpu, dataset, passes, "float32", regime)
            base = base or seconds
            rows.append([arch, name, f"{images / seconds:.0f}", f"{EPOCH_IMAGES[arch] * seconds / images:.1f}",
                         f"{seconds / base:.2f}"])
    print_table(["arch", "training", "images/s", "epoch s (extrapolated)", "x standard"], rows)


if __name__ == "__main__":
    main()
