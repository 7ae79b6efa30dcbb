"""raysweep: the uncertainty relation of neural networks, measured while they train.

The numeric core (`models`, `data`, `attacks`, `quadrature`, `packets`, `train`,
`features`, `trial`) is pure torch and never imports Ray or file formats;
orchestration (`store`, `cli`, and the Ray executor) wraps it.
"""

__version__ = "0.1.0"
