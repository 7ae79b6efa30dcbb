"""The run directory: whole files, replaced epochs, checkpoints, names."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from raysweep.run.config import record, trial_config
from raysweep.errors import UserError
from raysweep.choices import check_name
from raysweep.run.local import write_epoch
from raysweep.store import SCHEMAS, RunStore
from raysweep.core.trial import Trial

CONFIG = trial_config(dataset="synthetic", epochs=2, dims=3, nodes=4, head_epochs=1, embed_points=8, limit_train=128, limit_test=32)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(str(tmp_path / "run"))
    s.create({"trials": {}})
    return s


def test_epochs_written_are_readable_with_the_contract_columns(store: RunStore) -> None:
    trial = Trial(CONFIG)
    for _ in range(2):
        write_epoch(store, CONFIG, trial.run_epoch())
    for table in ("epochs", "packets", "embeddings"):
        frame = pd.read_parquet(Path(store.root) / table)
        assert sorted(frame.columns) == sorted(SCHEMAS[table].names)  # trial comes last, from the partition
        assert set(frame["trial"]) == {CONFIG.name}
        assert sorted(frame["epoch"].unique()) == [1, 2]
    assert store.epochs_written(CONFIG.name) == [1, 2]


def test_rewriting_an_epoch_replaces_its_rows(store: RunStore) -> None:
    trial = Trial(CONFIG)
    result = trial.run_epoch()
    write_epoch(store, CONFIG, result)
    write_epoch(store, CONFIG, result)
    packets = store.read("packets")
    assert len(packets) == 2 * 3 * 10
    assert not packets.duplicated(["trial", "epoch", "space", "class", "dim"]).any()


def test_leftover_temporary_files_are_not_read(store: RunStore) -> None:
    write_epoch(store, CONFIG, Trial(CONFIG).run_epoch())
    (Path(store.root) / ".tmp" / "epoch-0002.parquet.dead").write_bytes(b"half a file")  # a writer that died
    assert store.read("packets")["epoch"].unique().tolist() == [1]


def test_files_are_written_outside_the_dataset_folders_and_moved_in(store: RunStore, monkeypatch) -> None:
    """Issue 13: a Polars or DuckDB scan of packets/ failed on a temporary file inside it."""
    root = Path(store.root)
    seen: list[tuple[str, list[str]]] = []

    class Watching:  # the store's filesystem, looking at the dataset folders just before each move
        def __init__(self, fs) -> None:
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def move(self, src: str, dst: str) -> None:
            files = [str(p.relative_to(root)) for table in ("epochs", "packets", "embeddings")
                     for p in (root / table).rglob("*") if p.is_file()]
            seen.append((src, files))
            self.fs.move(src, dst)

    monkeypatch.setattr(store, "fs", Watching(store.fs))
    write_epoch(store, CONFIG, Trial(CONFIG).run_epoch())
    assert len(seen) == 3
    for src, files in seen:
        assert src.startswith(f"{store.root}/.tmp/")
        assert all(f.endswith("/epoch-0001.parquet") and "/trial=" in f for f in files), files  # whole files only
    assert not list((root / ".tmp").iterdir())  # nothing left behind


def test_datasets_are_hive_partitioned_by_trial_with_the_renamed_boundary_term(store: RunStore) -> None:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    write_epoch(store, CONFIG, Trial(CONFIG).run_epoch())
    root = Path(store.root)
    path = root / "packets" / f"trial={CONFIG.name}" / "epoch-0001.parquet"
    in_file = pq.read_schema(path)
    assert "trial" not in in_file.names and "boundary_term" in in_file.names and "B" not in in_file.names
    table = ds.dataset(root / "packets", format="parquet", partitioning="hive").to_table()
    assert set(table.column("trial").to_pylist()) == {CONFIG.name}
    frame = pd.read_parquet(root / "packets")
    assert set(frame["trial"].astype(str)) == {CONFIG.name}
    # a constant feature has no packet: its spreads are nulls in the file, not NaN
    spreads = pq.read_table(path).column("sx")
    feature = pq.read_table(path).column("space").to_pylist()
    assert spreads.null_count == sum(1 for v, s in zip(spreads.to_pylist(), feature) if v is None)
    assert not any(v is not None and v != v for v in spreads.to_pylist())


def test_every_file_carries_the_runs_provenance(tmp_path: Path) -> None:
    from raysweep.cli import main
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", str(run), "epochs=1", "limit_train=64",
                 "limit_test=16"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    for path in run.glob("*/trial=*/epoch-0001.parquet"):
        provenance = json.loads(pq.read_schema(path).metadata[b"raysweep.provenance"])
        assert provenance == json.loads(json.dumps({k: manifest[k] for k in ("versions", "code_revision", "hardware")}))


def test_a_run_in_the_earlier_layout_is_refused_in_one_line(store: RunStore) -> None:
    old = Path(store.root) / "packets" / "mnist_conv3-synthetic-s0"
    old.mkdir(parents=True)
    with pytest.raises(UserError, match="packets/mnist_conv3-synthetic-s0 is in the layout of an earlier raysweep"):
        store.read("packets")


def test_files_carry_the_trial_config_in_their_schema_metadata(store: RunStore) -> None:
    write_epoch(store, CONFIG, Trial(CONFIG).run_epoch())
    import pyarrow.parquet as pq

    meta = pq.read_schema(Path(store.root) / "epochs" / f"trial={CONFIG.name}" / "epoch-0001.parquet").metadata
    assert json.loads(meta[b"raysweep.trial"])["dataset"] == "synthetic"


def test_checkpoints_round_trip_with_weights_only_and_keep_two(store: RunStore) -> None:
    trial = Trial(CONFIG)
    for epoch in (1, 2, 3):
        store.save_checkpoint(CONFIG.name, epoch, {"epoch": epoch, "w": torch.ones(2) * epoch, "g": trial.generator.get_state()})
    assert store.load_checkpoint(CONFIG.name)["epoch"] == 3
    assert len(list((Path(store.root) / "checkpoints" / CONFIG.name).glob("*.pt"))) == 2
    assert store.load_checkpoint("another-trial") is None


def test_empty_dataset_reads_as_empty_frame_with_columns(store: RunStore) -> None:
    assert list(store.read("packets").columns) == SCHEMAS["packets"].names


def test_creating_over_a_run_a_file_or_a_foreign_folder_is_refused(tmp_path: Path, store: RunStore) -> None:
    with pytest.raises(UserError, match="already holds a run: continue it with `raysweep resume"):
        RunStore(store.uri).create({})
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunStore(str(tmp_path / "file")).create({})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="non-empty directory that is not a run"):
        RunStore(str(tmp_path / "other")).create({})
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_folder_without_manifest_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a raysweep run"):
        RunStore(str(tmp_path)).manifest()


@pytest.mark.parametrize("name", ["..", "a/b", "../x", "", ".hidden", "a b"])
def test_names_that_could_leave_the_run_directory_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="not allowed"):
        check_name(name)


def test_truncated_file_is_named_by_status_and_readers(store: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    from raysweep.cli import main

    trial = Trial(CONFIG)
    write_epoch(store, CONFIG, trial.run_epoch())
    write_epoch(store, CONFIG, trial.run_epoch())
    victim = Path(store.root) / "packets" / f"trial={CONFIG.name}" / "epoch-0002.parquet"
    victim.write_bytes(victim.read_bytes()[:200])
    assert store.damaged("packets") == [str(victim)] and store.damaged("epochs") == []
    with pytest.raises(UserError, match="epoch-0002.parquet is truncated or corrupt"):
        store.read("packets")
    assert len(store.read("epochs")) > 0  # the other datasets stay readable
    json.dump({"trials": {CONFIG.name: record(CONFIG)}}, open(Path(store.root) / "manifest.json", "w"))
    assert main(["status", store.uri]) == 1
    assert f"DAMAGED {victim}" in capsys.readouterr().out


def test_manifest_holds_no_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from raysweep.run.presets import resolve
    from raysweep.run.provenance import manifest

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "another-secret-456")
    text = json.dumps(manifest(resolve("smoke", {}), preset="smoke", overrides={}, executor="local"), default=str)
    assert "very-secret-value-123" not in text and "another-secret-456" not in text
    assert "versions" in text and "code_revision" in text


class _Payload:
    """Unpickling this would create a file: what a hostile checkpoint could do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_hostile_checkpoint_runs_no_code_and_is_refused(store: RunStore, tmp_path: Path) -> None:
    import io

    from raysweep.store import CheckpointError

    target = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "run_id": store.run_id, "trial": CONFIG.name, "x": _Payload(target)}, buffer)
    with pytest.raises(CheckpointError, match="does not load"):
        store.parse_checkpoint(buffer.getvalue(), CONFIG.name)
    path = Path(store.root) / "checkpoints" / CONFIG.name / "epoch-0001.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(buffer.getvalue())
    assert store.load_checkpoint(CONFIG.name) is None
    assert any(p.startswith(f"{path} does not load") for p in store.checkpoint_problems())
    assert not target.exists()


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    calls = [
        (path.name, call)
        for folder in ("raysweep", "jobs", "analysis", "bench")
        for path in (root / folder).glob("*.py")
        for call in re.findall(r"torch\.load\(.*", path.read_text())  # one call per line here
    ]
    assert calls, "no torch.load found: the scan is broken"
    assert all("weights_only=True" in call for _, call in calls), calls


def test_duckdb_and_polars_read_the_datasets_as_readme_says_even_mid_write(tmp_path: Path) -> None:
    import duckdb
    import polars as pl

    from raysweep.cli import main

    run = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", str(run), "epochs=1", "limit_train=64",
                 "limit_test=16", "seed=0,1"]) == 0
    (run / ".tmp" / "epoch-0002.parquet.0123").write_bytes(b"PAR1 half a file")  # a write in progress
    packets = pd.read_parquet(run / "packets")
    query = f"SELECT trial, count(*) AS n, sum(boundary_term) AS s FROM read_parquet('{run}/packets/*/*.parquet', " \
            "hive_partitioning = true) GROUP BY trial ORDER BY trial"
    rows = duckdb.sql(query).fetchall()
    expected = packets.groupby("trial", observed=True)["boundary_term"].agg(["count", "sum"])
    assert [r[0] for r in rows] == ["mnist_conv3-synthetic-s0", "mnist_conv3-synthetic-s1"]
    assert [r[1] for r in rows] == packets.groupby("trial", observed=True).size().tolist()
    assert [r[2] for r in rows] == pytest.approx(expected["sum"].tolist(), rel=1e-12)
    scanned = pl.scan_parquet(f"{run}/packets/**/*.parquet", hive_partitioning=True).collect()
    assert scanned.height == len(packets) and set(scanned["trial"].unique()) == set(packets["trial"].astype(str))
    assert "boundary_term" in scanned.columns and "B" not in scanned.columns


def test_packets_of_the_revision_before_err_columns_are_refused_in_one_line(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = RunStore(str(tmp_path / "old"))
    store.create({"trials": {}})
    folder = tmp_path / "old" / "packets" / "trial=t"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"epoch": [1], "sx": [0.3], "se_sx": [None], "se_sp": [None]}), folder / "epoch-0001.parquet")
    with pytest.raises(UserError, match=r"columns of an earlier raysweep \(se_sx, se_sp; no .*err_sx, err_sp, flagged"):
        store.read("packets")
