"""Writers of the standard dataset file formats, for tests that build their own data folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IDX_IMAGE_MAGIC = 0x00000803
IDX_LABEL_MAGIC = 0x00000801


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    """Write a uint8 IDX file: big-endian magic, one big-endian uint32 per dim, then bytes."""
    magic = IDX_IMAGE_MAGIC if array.ndim == 3 else IDX_LABEL_MAGIC
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_idx_dataset(
    folder: Path, *, gz: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    """Tiny MNIST-format train (12) and test (7) splits; returns what was written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 7, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, gz=gz)
    return arrays


