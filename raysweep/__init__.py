"""raysweep: the uncertainty relation of neural networks, measured while they train.

The numeric core (`models`, `data`, `attacks`, `quadrature`, `packets`, `train`,
`features`, `trial`) is pure torch and never imports Ray or file formats;
orchestration (`store`, `cli`, and the Ray executor) wraps it.
"""

import warnings

__version__ = "0.1.0"

# torch deprecates torch.jit.script and still calls it itself (torchvision's import, the first
# forward-mode pass): the warning would print in every process, each new Ray worker too, and
# is not ours to act on.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
