"""Entry point for `ray job submit --working-dir . -- python jobs/figures.py RUN [RUN ...] [--out DIR]`.

Arguments are those of `raysweep figures`; `--smoke-test` skips the t-SNE figure.
"""

from __future__ import annotations

import sys

from raysweep.cli import main

if __name__ == "__main__":
    args = [("--no-tsne" if a == "--smoke-test" else a) for a in sys.argv[1:]]
    sys.exit(main(["figures", *args]))
