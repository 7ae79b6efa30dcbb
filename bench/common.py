"""What the bench scripts share: the device, the machine header, a timer, models by name, a table printer."""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from raysweep.run import allocator
from raysweep.core import data, models, train

T = TypeVar("T")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every bench script takes: --smoke-test and --threads."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, runs in seconds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    return p


def setup(threads: int | None) -> None:
    """Set the thread count (if given) and print the header: torch, threads, CPU or GPU, date."""
    if threads is not None:
        torch.set_num_threads(threads)
    allocator.keep_freed_memory()  # as every raysweep trial and packet task does
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "no GPU"
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, {device}, "
          f"{datetime.date.today().isoformat()}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], *, repeats: int = 3, warmup: int = 1) -> tuple[float, T]:
    """Median wall time of `repeats` calls of fn, after `warmup` untimed calls, and fn's last result."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def model_and_base(arch: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A randomly initialised float32 model in eval mode on DEVICE, and a base point: the mean
    training image of the synthetic data set of the arch's input shape (smooth, like a real mean image)."""
    torch.manual_seed(seed)
    model = models.build(arch, num_classes=10).eval().to(DEVICE)
    c, h, w = models.input_shape(arch)
    return model, data.load(f"synthetic:{c}x{h}x{w}").x_train.mean(0).to(DEVICE)


def trained(arch: str, ds: data.Dataset, epochs: int) -> nn.Module:
    """The arch (seed 0) trained `epochs` epochs on `ds` with its own recipe, on ds's device, in eval mode."""
    torch.manual_seed(0)
    model = models.build(arch, num_classes=ds.num_classes).to(ds.x_train.device)
    recipe = train.recipe_for(arch)
    steps = train.steps_per_epoch(ds.x_train.shape[0], recipe.batch_size)
    optimizer, scheduler = train.make_optimizer(model, recipe, max(1, epochs * steps))
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        train.train_epoch(model, optimizer, scheduler, ds.x_train, ds.y_train, recipe, generator=generator, epoch=epoch + 1)
    return model.eval()


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain-text table of already formatted cells: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows)]
    for row in (columns, *rows):
        cells = [f"{row[0]:<{widths[0]}}"] + [f"{cell:>{w}}" for cell, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))


def interval(x_base: torch.Tensor, dims: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension [a, b] of the given width inside [0, 1], centred on the base pixel where it fits.

    Width 1 is the pixel interval [0, 1] itself; narrower ones keep nets with very many linear
    pieces per line (resnet9) affordable for the piecewise walk on a CPU.
    """
    centre = x_base.reshape(-1)[dims].double().cpu()
    a = (centre - width / 2).clamp(0.0, 1.0 - width)
    return a, a + width
