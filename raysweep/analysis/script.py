"""What `raysweep figures` and every script in the top-level `analysis/` share: loading runs for
drawing, the epochs of Fig. 1, and the command line `RUN [RUN ...] [--out DIR] [--format ...]`.

Its arguments are defined without loading pandas or the store, so `raysweep --help` stays quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from raysweep.choices import FORMATS
from raysweep.errors import UserError

if TYPE_CHECKING:
    from raysweep.analysis.results import Results

DEFAULT_EPOCHS = "1,21,41"  # the paper's Fig. 1 panels

Draw = Callable[["Results", argparse.Namespace], list[Path]]


def loaded(runs: Sequence[str]) -> Results:
    """The runs' results, refused in one line when no epoch has finished in any of them."""
    from raysweep.analysis.results import load

    results = load(runs)
    if results.epochs.empty:
        raise UserError(f"{', '.join(runs)}: no epoch has finished yet, so there is nothing to draw: "
                        f"see `raysweep status {runs[0]}`")
    return results


def parse_epochs(text: str | None) -> list[int]:
    """The epochs of Fig. 1's class-8 panels as given (`--epochs 1,21,41`), or the paper's by default."""
    try:
        return [int(e) for e in (text or DEFAULT_EPOCHS).split(",") if e.strip()]
    except ValueError:
        raise UserError(f"--epochs {text!r}: give comma-separated epoch numbers, e.g. 1,21,41") from None


def check_epochs(text: str | None, results: Results) -> list[int]:
    """`parse_epochs`, where each epoch named must exist in the runs; the default is snapped to the
    nearest epochs they have by the figure itself."""
    chosen = parse_epochs(text)
    source = results.embeddings if not results.embeddings.empty else results.epochs
    have = sorted(set(source["epoch"]))
    if text and (missing := [e for e in chosen if e not in have]):
        raise UserError(f"--epochs {text}: the run has no epoch {missing[0]} (epochs {have[0]}-{have[-1]} "
                        f"are there): give epochs it has, e.g. --epochs {','.join(map(str, have[:: max(1, len(have) // 3)][:3]))}")
    return chosen


def arguments(*, epochs: bool = False, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """RUN [RUN ...] [--out DIR] [--format F] (and --epochs for Fig. 1), on `parser` or a bare one."""
    p = parser or argparse.ArgumentParser(add_help=False)
    p.add_argument("runs", nargs="+", metavar="RUN", help="one or more run directories (several: compared)")
    p.add_argument("--out", help="output folder (default: RUN/figures of the first run, a local path)")
    p.add_argument("--format", default="png", choices=FORMATS, help="figure file format (default: png)")
    if epochs:
        p.add_argument("--epochs", help="epochs of the class-8 panels, each one the run has (default: those nearest 1, 21, 41)")
    return p


def run(doc: str, draw: Draw, argv: list[str] | None = None, *, epochs: bool = False,
        extra: Callable[[argparse.ArgumentParser], object] | None = None) -> int:
    """A script's whole life: parse, load, draw, print each file written; bad input exits 2 in one line.
    `extra` adds a script's own options to the parser."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments(epochs=epochs, parser=parser)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    prog = os.path.basename(sys.argv[0]) or "analysis"
    from raysweep.store import RunStore

    try:
        if epochs:
            parse_epochs(args.epochs)
        results = loaded(args.runs)
        if epochs:
            args.epochs = check_epochs(args.epochs, results)
        first = RunStore(args.runs[0])
        if not (args.out or first.is_local):
            raise UserError(f"{args.runs[0]} is not a local path: give --out DIR (or use `raysweep figures`, which "
                            "copies the files into the run)")
        args.out = Path(args.out or Path(first.root) / "figures")
        for note in results.notes:
            print(f"{prog}: note: {note}", file=sys.stderr)
        for path in draw(results, args):
            print(path)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
