"""The run directory: a manifest, three Parquet datasets, and checkpoints.

Layout (a local path or any URI pyarrow's filesystems accept):

    <run>/manifest.json                            config, versions, code revision
    <run>/epochs/trial=<trial>/epoch-0007.parquet  one row per (trial, epoch, space, attack)
    <run>/packets/trial=<trial>/epoch-0007.parquet one row per (trial, epoch, space, class, dim)
    <run>/embeddings/trial=<trial>/epoch-0007.parquet  Fig. 1 material
    <run>/checkpoints/<trial>/epoch-0007.pt        trial state (torch, loaded weights_only)
    <run>/.tmp/                                    files being written (never inside a dataset)

The datasets are hive-partitioned by trial: pyarrow, DuckDB and Polars read
`trial` from the folder name (`pandas.read_parquet(run/"packets")`, DuckDB's
`read_parquet('run/packets/*/*.parquet', hive_partitioning = true)`, Polars'
`scan_parquet('run/packets/**/*.parquet', hive_partitioning=True)`). One file per
(dataset, trial, epoch): a re-run epoch replaces its files, so rows are never
doubled. Every file is written under `.tmp/` and moved into place, so a reader,
even one scanning a dataset while a run writes, sees each file whole or not at all.

Every Parquet file carries its trial's config, the run's id and the run's
provenance (package versions, code revision, hardware) in its schema metadata,
and every checkpoint carries the run's id and trial name: a file copied out of
its run still says where it came from, a missing manifest can be rebuilt from the
files, and a checkpoint copied in from another run is never resumed from.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
import zipfile
from typing import Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysweep import schema
from raysweep.choices import check_name
from raysweep.errors import UserError
from raysweep.schema import REQUIRED, TABLES

TUNE_FOLDER = "tune"  # Ray Tune's own state and checkpoints, inside the run directory
TMP_FOLDER = ".tmp"  # files being written, outside every dataset folder
PARTITION = f"{schema.PARTITION}="  # hive partition folders of the datasets: <table>/trial=<name>/
PROVENANCE = ("versions", "code_revision", "hardware")  # manifest keys copied into every Parquet file
KEEP_CHECKPOINTS = 2  # the newest and the one before, in case the newest was cut short

_ARROW = {
    "bool": pa.bool_(), "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
    "float64": pa.float64(), "list<float32>": pa.list_(pa.float32()),
}
SCHEMAS = {
    name: pa.schema([(c.name, _ARROW[c.type]) for c in dataset.columns]) for name, dataset in schema.DATASETS.items()
}
SCHEMAS_IN_FILES = {
    name: pa.schema([(c.name, _ARROW[c.type]) for c in dataset.stored]) for name, dataset in schema.DATASETS.items()
}

_EPOCH = re.compile(r"epoch-(\d+)\.parquet$")
_EPOCH_PT = re.compile(r"epoch-(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that must not be resumed from: damaged, or written by another run or trial."""


def _checkpoint_epoch(path: str) -> int:
    return int(_EPOCH_PT.search(path).group(1))


def _short_path(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else f"{text[:keep // 2]}...{text[-keep // 2:]}"


def _trial_of(path: str) -> str | None:
    """The trial of a dataset file `<table>/trial=<name>/epoch-N.parquet`, else None."""
    folder = path.split("/")[-2]
    return folder[len(PARTITION):] if folder.startswith(PARTITION) else None


class RunStore:
    """Read and write one run directory."""

    def __init__(self, uri: str) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.root = self.root.rstrip("/")
        self._manifest: dict | None = None
        self._tmp_ready = False

    @property
    def location(self) -> str:
        """Where the run lives, for other processes: an absolute local path or the URI as given."""
        return self.root if isinstance(self.fs, pafs.LocalFileSystem) else self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, name: str) -> str:
        """The location of `name` inside the run: a path, or the URI with `/name` before its query
        (`s3://bucket/run?endpoint_override=...` -> `s3://bucket/run/tune?endpoint_override=...`)."""
        if self.is_local:
            return f"{self.root}/{name}"
        base, sep, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{name}{sep}{query}"

    # -- small JSON files beside the datasets (driver heartbeat, trial stages) -----
    def write_json(self, name: str, value: dict) -> None:
        self._write_bytes(f"{self.root}/{name}", json.dumps(value, default=str).encode())

    def upload(self, local: "os.PathLike[str] | str", name: str) -> str:
        """Copy a local file to `name` inside the run (whole or not at all); returns where it went."""
        with open(local, "rb") as f:
            self._write_bytes(f"{self.root}/{name}", f.read())
        return self.child(name)

    def read_json(self, name: str) -> dict | None:
        path = f"{self.root}/{name}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read())

    # -- manifest -----------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return f"{self.root}/manifest.json"

    def exists(self) -> bool:
        return self.fs.get_file_info(self.manifest_path).type == pafs.FileType.File

    def has_tune_state(self) -> bool:
        return self.fs.get_file_info(f"{self.root}/{TUNE_FOLDER}").type == pafs.FileType.Directory

    def create(self, manifest: dict) -> None:
        self.check_new()
        self.fs.create_dir(self.root, recursive=True)
        self._write_manifest(manifest)

    def check_new(self) -> None:
        """Refuse a path that is a file, an existing run, a folder of something else, or one that cannot be created.

        A new path is created and removed again to prove it can be, with every folder above it that
        did not exist (`runs/` of a default --out), so nothing is left behind.
        """
        try:
            info = self.fs.get_file_info(self.root)
            if info.type == pafs.FileType.NotFound:
                made = self.root
                while (parent := made.rsplit("/", 1)[0]) and parent != made and \
                        self.fs.get_file_info(parent).type == pafs.FileType.NotFound:
                    made = parent
                self.fs.create_dir(self.root, recursive=True)
                self.fs.delete_dir(made)
                return
        except OSError as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            reason = reason if len(reason) <= 100 else reason[:97] + "..."
            raise UserError(f"--out {_short_path(self.uri)} cannot be created ({reason}): choose a path you can write") from None
        if info.type == pafs.FileType.File:
            raise UserError(f"--out {self.uri} is a file: give a directory path for the run")
        if self.exists():
            raise UserError(f"{self.uri} already holds a run: continue it with `raysweep resume {self.uri}` or choose another --out")
        if info.type == pafs.FileType.Directory and self.fs.get_file_info(pafs.FileSelector(self.root)):
            raise UserError(f"--out {self.uri} is a non-empty directory that is not a run: choose an empty or new path")

    def manifest(self) -> dict:
        """The run's manifest (read once, then cached)."""
        if self._manifest is not None:
            return self._manifest
        if not self.exists():
            if self.recoverable_trials():
                raise UserError(
                    f"{self.uri} has results but no manifest.json: `raysweep resume {self.uri}` rebuilds it from the "
                    "Parquet files' metadata"
                )
            raise UserError(f"{self.uri} is not a raysweep run (no manifest.json): give the --out path of a run")
        with self.fs.open_input_stream(self.manifest_path) as f:
            try:
                self._manifest = json.loads(f.read())
            except json.JSONDecodeError as exc:
                raise UserError(f"{self.manifest_path} is corrupt ({exc}): restore it or start a new run") from None
        return self._manifest

    @property
    def run_id(self) -> str | None:
        """The id the manifest gave this run (None for runs written before ids existed)."""
        return self.manifest().get("run_id")

    def recoverable_trials(self) -> dict[str, dict]:
        """Trial configs (and the run id) read back from the metadata of intact `epochs/` files."""
        selector = pafs.FileSelector(f"{self.root}/epochs", recursive=True, allow_not_found=True)
        found: dict[str, dict] = {}
        for info in sorted(self.fs.get_file_info(selector), key=lambda i: i.path):
            trial = _trial_of(info.path)
            if info.type != pafs.FileType.File or info.base_name.startswith(".") or trial is None or trial in found:
                continue
            try:
                with self.fs.open_input_file(info.path) as f:
                    meta = pq.read_schema(f).metadata or {}
            except (pa.ArrowInvalid, OSError):
                continue
            if b"raysweep.trial" in meta:
                found[trial] = {
                    "config": json.loads(meta[b"raysweep.trial"]),
                    "run_id": meta.get(b"raysweep.run", b"").decode() or None,
                }
        return found

    def rebuild_manifest(self, extra: dict) -> dict:
        """Write a manifest from the Parquet metadata after the original was lost; returns it.

        Trials that never finished an epoch left no file, so they cannot be recovered.
        """
        found = self.recoverable_trials()
        if not found:
            raise UserError(f"{self.uri} has no manifest.json and no readable results: it is not a run to resume")
        run_ids = {t["run_id"] for t in found.values()}
        if len(run_ids) > 1:
            raise UserError(f"{self.uri} mixes files of several runs ({', '.join(map(str, run_ids))}): it cannot be rebuilt")
        manifest = {
            **extra,
            "run_id": run_ids.pop(),
            "rebuilt": "from the Parquet files' metadata; trials that never finished an epoch are not listed",
            "trials": {name: t["config"] for name, t in sorted(found.items())},
        }
        self._write_manifest(manifest)
        return manifest

    def _write_manifest(self, manifest: dict) -> None:
        self._write_bytes(self.manifest_path, json.dumps(manifest, indent=2, default=str).encode())
        self._manifest = manifest

    # -- results ------------------------------------------------------------------
    def write_epoch(
        self, trial: str, epoch: int, frames: Mapping[str, pd.DataFrame | None], *, config: dict,
        tables: Iterable[str] = TABLES,
    ) -> None:
        """Write an epoch's datasets (all of `frames`, or the ones named in `tables`), each replacing any
        earlier file of that epoch. A frame holds its dataset's columns but `trial`, which the partition
        folder gives; None (embeddings of a trial that keeps no Fig. 1 points) writes nothing.

        `epochs` goes last: its file marks the epoch as written (`epochs_written`, and so
        `local.last_written`), so a stop between files leaves the epoch to be measured again.
        `config` (the trial's flat config) goes into every file's metadata with the run's
        id and provenance.
        """
        wanted = set(tables)
        name = check_name(trial)
        manifest = self.manifest()  # cached; run_id needs it too
        meta = {
            b"raysweep.trial": json.dumps(config).encode(),
            b"raysweep.run": (self.run_id or "").encode(),
            b"raysweep.provenance": json.dumps({k: manifest.get(k) for k in PROVENANCE}, default=str).encode(),
        }
        for table in sorted(frames, key=lambda t: t == "epochs"):
            frame = frames[table]
            if frame is None or table not in wanted:
                continue
            # NaN (a constant feature's packet) becomes null
            file_schema = SCHEMAS_IN_FILES[table].with_metadata(meta)
            missing = [c for c in file_schema.names if c not in frame.columns]
            if missing:
                raise ValueError(f"{table} rows lack the columns {missing} of raysweep.schema")
            arrow = pa.Table.from_pandas(frame[file_schema.names], schema=file_schema, preserve_index=False)
            for extra in [c for c in frame.columns if c not in file_schema.names]:  # a sweep's own fields (SPEC 7)
                arrow = arrow.append_column(extra, pa.Array.from_pandas(frame[extra]))
            arrow = arrow.replace_schema_metadata(meta)
            sink = pa.BufferOutputStream()
            pq.write_table(arrow, sink)
            self._write_bytes(self._epoch_path(table, name, epoch, "parquet"), sink.getvalue().to_pybytes())

    def read(self, table: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """One dataset as a DataFrame with the contract's columns, or those named (empty if nothing is written yet).

        Raises UserError if the files lack contract columns (not written by this raysweep).
        """
        base = f"{self.root}/{table}"
        arrow_schema = SCHEMAS[table]
        if columns is not None:
            arrow_schema = pa.schema([arrow_schema.field(c) for c in columns])
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return arrow_schema.empty_table().to_pandas()
        self.check_layout(table)
        try:
            dataset = ds.dataset(base, filesystem=self.fs, format="parquet", partitioning="hive")
            extras = [c for c in dataset.schema.names if c not in SCHEMAS[table].names] if columns is None else []
            table_data = dataset.to_table(columns=[c for c in arrow_schema.names if c in dataset.schema.names] + extras)
        except (pa.ArrowInvalid, OSError) as exc:
            bad = self.damaged(table) or [base]
            raise UserError(
                f"{bad[0]} is truncated or corrupt ({str(exc).splitlines()[0][:120]}): `raysweep resume {self.uri}` "
                f"recomputes its epoch ({len(bad)} damaged file(s) in {table}/; `raysweep status` lists them all)"
            ) from None
        missing = [c for c in arrow_schema.names if c not in dataset.schema.names]
        if missing and "se_sx" in dataset.schema.names:
            raise UserError(
                f"{self.uri}/{table} has the columns of an earlier raysweep (se_sx, se_sp; no {', '.join(missing)}, "
                "SPEC 1.3 revised 2026-12-01): read it with that version, or run it again with this one"
            )
        if missing:
            raise UserError(
                f"{self.uri}/{table} lacks the columns {', '.join(missing)}: it was not written by this raysweep; "
                "re-run it or point at another run"
            )
        frame = table_data.select(arrow_schema.names).cast(arrow_schema).to_pandas()  # the partition's dictionary -> string
        for extra in extras:  # a sweep's fields, after the contract's columns
            frame[extra] = table_data.column(extra).to_pandas()
        keys = [k for k in schema.DATASETS[table].keys if k in frame]
        return frame.sort_values(keys).reset_index(drop=True)

    def check_layout(self, table: str) -> None:
        """Refuse, in one line, a dataset in the layout of raysweep before the trial=<name> partitions."""
        selector = pafs.FileSelector(f"{self.root}/{table}", allow_not_found=True)
        old = [i.base_name for i in self.fs.get_file_info(selector)
               if i.type == pafs.FileType.Directory and not i.base_name.startswith((PARTITION, "."))]
        if old:
            raise UserError(
                f"{self.uri}/{table}/{old[0]} is in the layout of an earlier raysweep (folders per trial without "
                "'trial=', column B): read it with that version, or run it again with this one"
            )

    def damaged(self, table: str, *, deep: bool = True) -> list[str]:
        """Files of a dataset that do not read as Parquet (truncated, overwritten, not ours).

        deep=False reads each file's footer only (its schema and row groups: what a
        truncation or an overwrite destroys), not its data: `status` without `--deep`.
        """
        selector = pafs.FileSelector(f"{self.root}/{table}", recursive=True, allow_not_found=True)
        bad = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            try:
                with self.fs.open_input_file(info.path) as f:
                    if deep:
                        pq.ParquetFile(f).read()
                    else:
                        pq.read_metadata(f)
            except (pa.ArrowInvalid, OSError):
                bad.append(info.path)
        return sorted(bad)

    def epochs_written(self, trial: str, table: str = "epochs") -> list[int]:
        """Epochs whose file of `table` exists for this trial (intact or not)."""
        selector = pafs.FileSelector(f"{self.root}/{table}/{PARTITION}{check_name(trial)}", allow_not_found=True)
        return sorted(int(m.group(1)) for f in self.fs.get_file_info(selector) if (m := _EPOCH.search(f.path)))

    def damaged_epochs(self, trial: str, *, embeddings: bool, deep: bool = True) -> dict[int, dict[str, str]]:
        """Epochs up to the trial's last written one that must be recomputed: per epoch, each damaged
        table with the reason (so that `resume` rewrites those files and no others).

        A file is damaged when it does not read (see `damaged`), or when a required file
        (or, with `embeddings` (the trial keeps Fig. 1 points), its embeddings file) is missing.
        """
        name = check_name(trial)
        required = REQUIRED + (("embeddings",) if embeddings else ())
        written = {table: set(self.epochs_written(name, table)) for table in TABLES}
        last = max((max(e) for e in written.values() if e), default=0)
        problems: dict[int, dict[str, str]] = {}
        for table in TABLES:
            for path in self.damaged(table, deep=deep):
                if _trial_of(path) == name and (m := _EPOCH.search(path)):
                    problems.setdefault(int(m.group(1)), {})[table] = f"{path} is truncated or corrupt"
        for epoch in range(1, last + 1):
            for table in required:
                if epoch not in written[table]:
                    problems.setdefault(epoch, {})[table] = f"{self._epoch_path(table, name, epoch, 'parquet')} is missing"
        return dict(sorted(problems.items()))

    # -- checkpoints --------------------------------------------------------------
    def checkpoint_bytes(self, trial: str, state: dict) -> bytes:
        """A trial state as checkpoint bytes, stamped with this run's id and the trial's name."""
        import torch

        buffer = io.BytesIO()
        torch.save({**state, "run_id": self.run_id, "trial": trial}, buffer)
        return buffer.getvalue()

    def parse_checkpoint(self, payload: bytes, trial: str) -> dict:
        """A checkpoint's state, loaded with weights_only=True (no code runs).

        Raises CheckpointError if it does not load or belongs to another run or trial.
        """
        import torch

        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged or hostile pickle
            raise CheckpointError(f"does not load ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("run_id") != self.run_id:
            owner = state.get("run_id") if isinstance(state, dict) else None
            raise CheckpointError(f"comes from another run (run_id {owner}, this run is {self.run_id})")
        if state.get("trial") != trial:
            raise CheckpointError(f"belongs to trial {state.get('trial')}, not {trial}")
        return state

    def save_checkpoint(self, trial: str, epoch: int, state: dict) -> None:
        self._write_bytes(self._epoch_path("checkpoints", check_name(trial), epoch, "pt"), self.checkpoint_bytes(trial, state))
        for old in self._checkpoints(trial)[:-KEEP_CHECKPOINTS]:
            self.fs.delete_file(old)

    def load_checkpoint(self, trial: str, before: int | None = None) -> dict | None:
        """The newest usable checkpoint of a trial (of an epoch < `before`, if given), or None.

        Damaged checkpoints and those of another run are passed over (`bad_checkpoints` names them).
        """
        for path in reversed(self._checkpoints(trial)):
            if before is None or _checkpoint_epoch(path) < before:
                try:
                    return self._read_checkpoint(path, trial)
                except CheckpointError:
                    continue
        return None

    def bad_checkpoints(self, trial: str) -> dict[int, str]:
        """This trial's checkpoints that do not load or belong elsewhere, by epoch, with the reason."""
        return {
            _checkpoint_epoch(path): problem
            for path in self._checkpoints(trial)
            if (problem := self._checkpoint_problem(path, trial))
        }

    def checkpoint_problems(self, *, deep: bool = True) -> list[str]:
        """Every checkpoint file in the run (ours and Tune's) that does not load or is not this run's.

        deep=False only checks that each is a whole zip archive (torch's format: a cut
        file loses its directory), without torch; deep=True loads each and checks its run id.
        """
        problems = []
        check = self._checkpoint_problem if deep else self._archive_problem
        for folder in ("checkpoints", TUNE_FOLDER):
            selector = pafs.FileSelector(f"{self.root}/{folder}", recursive=True, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and info.base_name.endswith(".pt") and not info.base_name.startswith("."):
                    # checkpoints/<trial>/epoch-N.pt, or Tune's tune/<trial>/checkpoint_N/state.pt
                    parts = info.path[len(self.root) + 1 :].split("/")
                    if problem := check(info.path, parts[1] if len(parts) > 2 else ""):
                        problems.append(problem)
        return sorted(problems)

    def _archive_problem(self, path: str, trial: str) -> str | None:
        try:
            with self.fs.open_input_file(path) as f:
                zipfile.ZipFile(f).close()
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"{path} does not load (not a whole checkpoint archive)"
        return None

    def _read_checkpoint(self, path: str, trial: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return self.parse_checkpoint(f.read(), trial)

    def _checkpoint_problem(self, path: str, trial: str) -> str | None:
        try:
            self._read_checkpoint(path, trial)
        except CheckpointError as exc:
            return f"{path} {exc}"
        return None

    def _checkpoints(self, trial: str) -> list[str]:
        selector = pafs.FileSelector(f"{self.root}/checkpoints/{check_name(trial)}", allow_not_found=True)
        return sorted(f.path for f in self.fs.get_file_info(selector) if _EPOCH_PT.search(f.path))

    # -- plumbing -----------------------------------------------------------------
    def _epoch_path(self, table: str, trial: str, epoch: int, ext: str) -> str:
        folder = trial if table == "checkpoints" else f"{PARTITION}{trial}"
        return f"{self.root}/{table}/{folder}/epoch-{epoch:04d}.{ext}"

    def _write_bytes(self, path: str, payload: bytes) -> None:
        """Whole or not at all: write a temporary file in `<run>/.tmp/`, then move it over the target.

        The temporary file lives outside every dataset folder, so a reader scanning a
        dataset while a run writes (pyarrow, DuckDB, Polars) never meets half a file.
        """
        folder = path.rsplit("/", 1)[0]
        self.fs.create_dir(folder, recursive=True)
        if not self._tmp_ready:  # once per store: every file of the run passes through it
            self.fs.create_dir(f"{self.root}/{TMP_FOLDER}", recursive=True)
            self._tmp_ready = True
        tmp = f"{self.root}/{TMP_FOLDER}/{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(payload)
        self.fs.move(tmp, path)
