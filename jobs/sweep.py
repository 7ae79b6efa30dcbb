"""Entry point for `ray job submit --working-dir . -- python jobs/sweep.py [raysweep run arguments]`.

Arguments are those of `raysweep run` (see `raysweep run --help`); `--smoke-test`
shrinks the run to the seconds-long `smoke` preset.
"""

from __future__ import annotations

import sys

from raysweep.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--smoke-test" in args:
        args = ["--preset", "smoke", *[a for a in args if a != "--smoke-test"]]
    sys.exit(main(["run", *args]))
