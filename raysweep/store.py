"""The run directory: a manifest, three Parquet datasets, and checkpoints.

Layout (a local path or any URI pyarrow's filesystems accept):

    <run>/manifest.json                      config, versions, code revision
    <run>/epochs/<trial>/epoch-0007.parquet  one row per (trial, epoch, space, attack)
    <run>/packets/<trial>/epoch-0007.parquet one row per (trial, epoch, space, class, dim)
    <run>/embeddings/<trial>/epoch-0007.parquet  Fig. 1 material
    <run>/checkpoints/<trial>/epoch-0007.pt  trial state (torch, loaded weights_only)

One file per (dataset, trial, epoch): a re-run epoch replaces its files, so rows
are never doubled. Every file is written to a temporary name and moved into
place, so a reader sees it whole or not at all. `pandas.read_parquet(run/"packets")`
reads a whole dataset; the trial is a column of every file.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from dataclasses import asdict
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from raysweep.config import TrialConfig
from raysweep.errors import UserError
from raysweep.trial import EpochResult

TABLES = ("epochs", "packets", "embeddings")
KEEP_CHECKPOINTS = 2  # the newest and the one before, in case the newest was cut short

SCHEMAS = {
    "epochs": pa.schema([
        ("trial", pa.string()), ("arch", pa.string()), ("dataset", pa.string()), ("seed", pa.int64()),
        ("epoch", pa.int32()), ("space", pa.string()), ("attack", pa.string()),
        ("eps", pa.float64()), ("alpha", pa.float64()), ("steps", pa.int32()), ("budget_scale", pa.float64()),
        ("test_acc", pa.float64()), ("robust_acc", pa.float64()), ("train_loss", pa.float64()),
        ("seconds", pa.float64()),
    ]),
    "packets": pa.schema([
        ("trial", pa.string()), ("epoch", pa.int32()), ("space", pa.string()), ("class", pa.int32()),
        ("dim", pa.int64()), ("a", pa.float64()), ("b", pa.float64()), ("sx", pa.float64()), ("sp", pa.float64()), ("mean_x", pa.float64()),
        ("mean_p", pa.float64()), ("beta", pa.float64()), ("B", pa.float64()), ("bound", pa.float64()),
        ("estimator", pa.string()), ("nodes", pa.int32()), ("se_sx", pa.float64()), ("se_sp", pa.float64()),
    ]),
    "embeddings": pa.schema([
        ("trial", pa.string()), ("epoch", pa.int32()), ("kind", pa.string()), ("point", pa.int32()),
        ("label", pa.int32()), ("pred", pa.int32()), ("confidence", pa.float32()),
        ("coords", pa.list_(pa.float32())),
    ]),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str) -> str:
    """A trial or run name must be one plain path component."""
    if not _NAME.match(name) or name in (".", ".."):
        raise UserError(f"name {name!r} is not allowed: use letters, digits, '.', '_' and '-' only (no '/' or '..')")
    return name


class RunStore:
    """Read and write one run directory."""

    def __init__(self, uri: str) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.root = self.root.rstrip("/")

    @property
    def location(self) -> str:
        """Where the run lives, for other processes: an absolute local path or the URI as given."""
        return self.root if isinstance(self.fs, pafs.LocalFileSystem) else self.uri

    # -- manifest -----------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return f"{self.root}/manifest.json"

    def exists(self) -> bool:
        return self.fs.get_file_info(self.manifest_path).type == pafs.FileType.File

    def create(self, manifest: dict) -> None:
        self.check_new()
        self.fs.create_dir(self.root, recursive=True)
        self._write_bytes(self.manifest_path, json.dumps(manifest, indent=2, default=str).encode())

    def check_new(self) -> None:
        """Refuse a path that is a file, an existing run, or a folder of something else."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise UserError(f"--out {self.uri} is a file: give a directory path for the run")
        if self.exists():
            raise UserError(f"{self.uri} already holds a run: continue it with `raysweep resume {self.uri}` or choose another --out")
        if info.type == pafs.FileType.Directory and self.fs.get_file_info(pafs.FileSelector(self.root)):
            raise UserError(f"--out {self.uri} is a non-empty directory that is not a run: choose an empty or new path")

    def manifest(self) -> dict:
        if not self.exists():
            raise UserError(f"{self.uri} is not a raysweep run (no manifest.json): give the --out path of a run")
        with self.fs.open_input_stream(self.manifest_path) as f:
            try:
                return json.loads(f.read())
            except json.JSONDecodeError as exc:
                raise UserError(f"{self.manifest_path} is corrupt ({exc}): restore it or start a new run") from None

    # -- results ------------------------------------------------------------------
    def write_epoch(self, config: TrialConfig, result: EpochResult) -> None:
        """Write the epoch's three tables, each replacing any earlier file of that epoch."""
        name = check_name(config.name)
        meta = {b"raysweep.trial": json.dumps(asdict(config)).encode()}
        epochs = pd.DataFrame(result.metrics).assign(
            trial=name, arch=config.arch, dataset=config.dataset, seed=config.seed
        )
        tables = {
            "epochs": epochs,
            "packets": pd.DataFrame(result.packets).assign(trial=name),
            "embeddings": pd.DataFrame(result.embeddings).assign(trial=name) if result.embeddings else None,
        }
        for table, frame in tables.items():
            if frame is None:
                continue
            schema = SCHEMAS[table].with_metadata(meta)
            arrow = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
            sink = pa.BufferOutputStream()
            pq.write_table(arrow, sink)
            self._write_bytes(self._epoch_path(table, name, result.epoch, "parquet"), sink.getvalue().to_pybytes())

    def read(self, table: str) -> pd.DataFrame:
        """One dataset as a DataFrame with the contract's columns (empty if nothing is written yet).

        Raises UserError if the files lack contract columns (not written by this raysweep).
        """
        base = f"{self.root}/{table}"
        schema = SCHEMAS[table]
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return schema.empty_table().to_pandas()
        try:
            dataset = ds.dataset(base, filesystem=self.fs, format="parquet")
            table_data = dataset.to_table(columns=[c for c in schema.names if c in dataset.schema.names])
        except (pa.ArrowInvalid, OSError) as exc:
            bad = self.damaged(table) or [base]
            raise UserError(
                f"{bad[0]} is truncated or corrupt ({str(exc).splitlines()[0][:120]}): move it out of the run "
                f"({len(bad)} damaged file(s) in {table}/; `raysweep status` lists them all)"
            ) from None
        missing = [c for c in schema.names if c not in dataset.schema.names]
        if missing:
            raise UserError(
                f"{self.uri}/{table} lacks the columns {', '.join(missing)}: it was not written by this raysweep; "
                "re-run it or point at another run"
            )
        frame = table_data.select(schema.names).cast(schema).to_pandas()
        keys = [c for c in ("trial", "epoch", "space", "attack", "class", "dim", "kind", "point") if c in frame]
        return frame.sort_values(keys).reset_index(drop=True)

    def damaged(self, table: str) -> list[str]:
        """Files of a dataset that do not read as Parquet (truncated, overwritten, not ours)."""
        selector = pafs.FileSelector(f"{self.root}/{table}", recursive=True, allow_not_found=True)
        bad = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            try:
                with self.fs.open_input_file(info.path) as f:
                    pq.ParquetFile(f).read()
            except (pa.ArrowInvalid, OSError):
                bad.append(info.path)
        return sorted(bad)

    def epochs_written(self, trial: str) -> list[int]:
        """Epochs whose `epochs/` file exists for this trial."""
        selector = pafs.FileSelector(f"{self.root}/epochs/{check_name(trial)}", allow_not_found=True)
        return sorted(int(m.group(1)) for f in self.fs.get_file_info(selector) if (m := re.search(r"epoch-(\d+)\.parquet$", f.path)))

    # -- checkpoints --------------------------------------------------------------
    def save_checkpoint(self, trial: str, epoch: int, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._write_bytes(self._epoch_path("checkpoints", check_name(trial), epoch, "pt"), buffer.getvalue())
        for old in self._checkpoints(trial)[:-KEEP_CHECKPOINTS]:
            self.fs.delete_file(old)

    def load_checkpoint(self, trial: str) -> dict | None:
        """The newest checkpoint of a trial, or None. Loaded with weights_only=True (no code runs)."""
        paths = self._checkpoints(trial)
        if not paths:
            return None
        with self.fs.open_input_stream(paths[-1]) as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)

    def _checkpoints(self, trial: str) -> list[str]:
        selector = pafs.FileSelector(f"{self.root}/checkpoints/{check_name(trial)}", allow_not_found=True)
        return sorted(f.path for f in self.fs.get_file_info(selector) if f.path.endswith(".pt"))

    # -- plumbing -----------------------------------------------------------------
    def _epoch_path(self, table: str, trial: str, epoch: int, ext: str) -> str:
        return f"{self.root}/{table}/{trial}/epoch-{epoch:04d}.{ext}"

    def _write_bytes(self, path: str, payload: bytes) -> None:
        """Whole or not at all: write a temporary sibling, then move it over the target.

        The temporary name starts with '.', which pyarrow's dataset discovery skips.
        """
        folder, base = path.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{base}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(payload)
        self.fs.move(tmp, path)
