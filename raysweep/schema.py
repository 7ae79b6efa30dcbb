"""The output contract (SPEC 2): every dataset's columns, their types and meanings, once.

The store writes and reads by these tables (it maps the type names to pyarrow),
the epoch loop fills columns of these names, and the analysis reads them; tests
hold them against SPEC 2 and the README. Plain Python: importing it loads nothing.

A run directory holds one Parquet file per (dataset, trial, epoch) under
`<dataset>/trial=<name>/epoch-NNNN.parquet`: `trial` is the hive partition, a
column of every dataset for its readers but not stored inside the files.
A value that does not exist (a feature constant over the training set has
no packet; sx, sp of a = b) is a Parquet null.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTITION = "trial"  # the hive partition of every dataset: <dataset>/trial=<name>/
TYPES = ("bool", "string", "int32", "int64", "float32", "float64", "list<float32>")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of TYPES
    meaning: str


@dataclass(frozen=True)
class Dataset:
    """One Parquet dataset of a run: its columns in order, and the columns that identify a row."""

    name: str
    columns: tuple[Column, ...]
    keys: tuple[str, ...]  # a row's identity; reads are sorted by them

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def stored(self) -> list[Column]:
        """The columns inside each file (all but the partition)."""
        return [c for c in self.columns if c.name != PARTITION]


def _columns(*rows: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*row) for row in rows)


_TRIAL = ("trial", "string", "trial name: <arch>-<dataset>-s<seed> (the partition folder)")

EPOCHS = Dataset(
    "epochs",
    _columns(
        _TRIAL,
        ("arch", "string", "architecture: built-in name or import path"),
        ("dataset", "string", "dataset name"),
        ("seed", "int64", "the trial's seed"),
        ("epoch", "int32", "epoch, 1-based"),
        ("space", "string", "pixel or feature"),
        ("attack", "string", "the attack spec as configured, e.g. pgd:eps=8/255,alpha=2/255,steps=4"),
        ("eps", "float64", "L-inf budget in this space's units"),
        ("alpha", "float64", "step size in this space's units"),
        ("steps", "int32", "attack steps"),
        ("budget_scale", "float64", "this space's budget over the pixel budget (1 in pixel space)"),
        ("test_acc", "float64", "clean test accuracy, 0..1"),
        ("robust_acc", "float64", "accuracy on the attacked test set, 0..1"),
        ("train_loss", "float64", "mean training loss of the epoch (feature space: of the retrained head)"),
        ("seconds", "float64", "wall time of the whole epoch"),
    ),
    keys=("trial", "epoch", "space", "attack"),
)

PACKETS = Dataset(
    "packets",
    _columns(
        _TRIAL,
        ("epoch", "int32", "epoch, 1-based"),
        ("space", "string", "pixel or feature"),
        ("class", "int32", "label Y of the packet"),
        ("dim", "int64", "flat input (or feature) index i"),
        ("a", "float64", "interval start"),
        ("b", "float64", "interval end"),
        ("sx", "float64", "Δx_i of class Y (paper Eq. 13); null where a = b"),
        ("sp", "float64", "Δp_i of class Y (paper Eq. 14); null where a = b"),
        ("mean_x", "float64", "<x> = ∫ t psi² dt"),
        ("mean_p", "float64", "<p> = ∫ psi psi' dt (paper Eq. 12)"),
        ("beta", "float64", "β = ∫ g² dt (paper Eq. 22)"),
        ("boundary_term", "float64", "B = (b - <x>) psi(b)² - (a - <x>) psi(a)² (SPEC 1.2)"),
        ("bound", "float64", "|1 - B| / 2, the exact finite-interval bound on sx·sp"),
        ("estimator", "string", "piecewise, gauss or mc: what computed the row (auto chooses per chunk)"),
        ("nodes", "int32", "network evaluations of the dimension, error estimate and refinement included"),
        ("err_sx", "float64", "estimated error of sx (mc: its standard error; SPEC 1.3)"),
        ("err_sp", "float64", "estimated error of sp (mc: its standard error; SPEC 1.3)"),
        ("flagged", "bool", "the estimated relative error of sx or sp exceeds the trial's tol"),
    ),
    keys=("trial", "epoch", "space", "class", "dim"),
)

EMBEDDINGS = Dataset(
    "embeddings",
    _columns(
        _TRIAL,
        ("epoch", "int32", "epoch, 1-based"),
        ("kind", "string", "clean or attacked (by the first attack)"),
        ("point", "int32", "index of the test point"),
        ("label", "int32", "true label"),
        ("pred", "int32", "the network's prediction"),
        ("confidence", "float32", "softmax probability of the prediction"),
        ("coords", "list<float32>", "the first 50 principal components of the test features (fitted on clean points)"),
    ),
    keys=("trial", "epoch", "kind", "point"),
)

DATASETS = {d.name: d for d in (EPOCHS, PACKETS, EMBEDDINGS)}
TABLES = tuple(DATASETS)
REQUIRED = ("epochs", "packets")  # written every epoch; embeddings only when the trial keeps Fig. 1 points
