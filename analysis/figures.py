"""Draw Fig. 1, Fig. 2 and the trade-off report of one or more runs, from Parquet alone.

    python analysis/figures.py RUN [RUN ...] [--out DIR] [--format png|svg|pdf] [--epochs 1,21,41]

The same as `raysweep figures`; see `raysweep figures --help`.
"""

from __future__ import annotations

import sys

from raysweep.cli import main

if __name__ == "__main__":
    sys.exit(main(["figures", *sys.argv[1:]]))
