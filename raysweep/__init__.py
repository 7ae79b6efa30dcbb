"""raysweep: the uncertainty relation of neural networks, measured while they train.

Three floors on shared contracts:

- `core/`: the numerics, pure torch (models, data, training, attacks, packets, the
  epoch loop); never Ray, pyarrow, pandas or ctypes. It runs alone with `--executor local`.
- `run/`: orchestration (config and presets, the local driver, provenance, progress,
  and `run/ray/` for the cluster, packet tasks and Tune).
- `analysis/`: pandas, numpy, scipy and seaborn on the Parquet outputs; no torch.

Under all three: `errors`, `choices` (every list of choices), `schema` (the output
contract's columns) and `store` (the run directory). `packets`, `attacks` and `models`
are the public names of SPEC's contracts; `cli` is the command line.
"""

import warnings

__version__ = "0.1.0"

# torch deprecates torch.jit.script and still calls it itself (torchvision's import, the first
# forward-mode pass): the warning would print in every process, each new Ray worker too, and
# is not ours to act on.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
