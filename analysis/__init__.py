"""The analysis scripts: one figure or table from run directories each, on the public analysis API.

Run one as `python analysis/fig2.py RUN`; `raysweep figures` runs the same code
(installed as `raysweep.scripts`). Copy one to adapt a figure.
"""
