"""Training images/s per architecture with the project's own recipe and step (SPEC 5, third target).

    python bench/training.py [--threads N] [--smoke-test]

Per architecture: raysweep.train's recipe (`recipe_for`, unchanged), `make_optimizer` and `train_epoch`
on the generated images of the arch's input shape (`synthetic:CxHxW`, 512 training images per pass, with
the recipe's batch size and augmentation). One untimed pass, then the median pass time of several gives
images/s; one epoch of the real data set (60,000 MNIST or 50,000 CIFAR-10 images) is extrapolated from it.
On a machine with a GPU, resnet9 is timed there too, in float32: `train_epoch` has no mixed precision or
channels_last.
"""

from __future__ import annotations

import torch

from common import parser, print_table, setup, timed
from raysweep import data, models, train

PASSES = {"mnist_conv3": 16, "cifar_conv4": 16, "resnet9": 3}  # timed passes over the 512 images, CPU
GPU_PASSES = 20
EPOCH_IMAGES = {"mnist_conv3": 60_000, "cifar_conv4": 50_000, "resnet9": 50_000}  # MNIST, CIFAR-10
SMOKE_IMAGES = 32  # images per pass with --smoke-test


def pass_seconds(arch: str, device: str, passes: int, limit: int | None) -> tuple[float, int, int]:
    """Median seconds of one train_epoch pass, images per pass, and the batch size it ran with."""
    torch.manual_seed(0)
    recipe = train.recipe_for(arch)
    c, h, w = models.input_shape(arch)
    ds = data.load(f"synthetic:{c}x{h}x{w}", device=device, limit_train=limit)
    n = ds.x_train.shape[0]
    steps = train.steps_per_epoch(n, recipe.batch_size)
    model = models.build(arch, num_classes=10).to(device)
    optimizer, scheduler = train.make_optimizer(model, recipe, steps * (passes + 1))  # +1: the warm-up pass
    generator = torch.Generator().manual_seed(0)  # on the CPU, as the trial's
    seconds, _ = timed(
        lambda: train.train_epoch(model, optimizer, scheduler, ds.x_train, ds.y_train, recipe, generator=generator, epoch=0),
        repeats=passes,
    )
    batch = min(recipe.batch_size, n)
    return seconds, steps * batch, batch


def main() -> None:
    args = parser(__doc__).parse_args()
    setup(args.threads)
    runs = [(arch, "cpu", passes) for arch, passes in PASSES.items()]
    if torch.cuda.is_available():
        runs.append(("resnet9", "cuda", GPU_PASSES))
    rows = []
    for arch, device, passes in runs:
        passes, limit = (1, SMOKE_IMAGES) if args.smoke_test else (passes, None)
        seconds, images, batch = pass_seconds(arch, device, passes, limit)
        rate = images / seconds
        rows.append([
            arch, device, str(batch), str(images * passes), f"{rate:.0f}",
            f"{EPOCH_IMAGES[arch]:,}", f"{EPOCH_IMAGES[arch] / rate:.1f}",
        ])
    print_table(["arch", "device", "batch", "images timed", "images/s", "epoch images", "epoch s (extrapolated)"], rows)


if __name__ == "__main__":
    main()
