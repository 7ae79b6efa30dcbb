"""Damage inside a run directory: `status` names it, `resume` recomputes exactly that and touches nothing else.

Runs use threads=1 so that recomputed values can be compared bit for bit with the originals.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from raysweep.cli import main
from raysweep.run.config import trial_configs
from raysweep.store import RunStore

BASE = ["run", "--preset", "smoke", "--executor", "local", "threads=1", "limit_train=96", "limit_test=32"]
RUN = [*BASE, "epochs=4"]  # (a key given twice would sweep it)
TRIAL = "mnist_conv3-synthetic-s0"


def files(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a run by relative path: (modification time in ns, contents)."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def frames(run: Path) -> dict[str, pd.DataFrame]:
    store = RunStore(str(run))
    return {table: store.read(table).drop(columns=["seconds"], errors="ignore") for table in ("epochs", "packets", "embeddings")}


def test_a_truncated_and_a_missing_file_are_named_and_only_their_epochs_recomputed(
    finished: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = run / "packets" / f"trial={TRIAL}" / "epoch-0002.parquet"  # older than the two checkpoints kept
    truncated.write_bytes(truncated.read_bytes()[:300])
    missing = run / "embeddings" / f"trial={TRIAL}" / "epoch-0003.parquet"
    missing.unlink()
    before = files(run)
    assert main(["status", str(run)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {truncated} is truncated or corrupt; `raysweep resume {run}` measures epoch 2" in out
    assert f"DAMAGED {missing} is missing" in out
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"[{TRIAL}] epoch 2 measured again" in out and f"[{TRIAL}] epoch 3 measured again" in out
    assert "is finished after 2 repair(s)" in out
    after = files(run)
    # Only the two damaged files are written again: not the epoch's other tables (issue 12).
    redone = {f"packets/trial={TRIAL}/epoch-0002.parquet", f"embeddings/trial={TRIAL}/epoch-0003.parquet"}
    untouched = set(before) - redone
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert set(after) == set(before) | {str(missing.relative_to(run))}
    for table, frame in frames(finished).items():
        pd.testing.assert_frame_equal(frame, frames(run)[table], check_exact=True)
    assert main(["status", "--deep", str(run)]) == 0
    assert main(["resume", str(run)]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out


def test_a_checkpoint_from_another_run_is_named_never_resumed_from_and_rebuilt(
    finished: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main([*BASE, "epochs=2", "--out", str(other)]) == 0
    capsys.readouterr()
    planted = run / "checkpoints" / TRIAL / "epoch-0004.pt"
    shutil.copy(other / "checkpoints" / TRIAL / "epoch-0002.pt", planted)
    wrong_trial = run / "checkpoints" / TRIAL / "epoch-0003.pt"
    state = torch.load(wrong_trial, weights_only=True)
    torch.save({**state, "trial": "resnet9-cifar10-s0"}, wrong_trial)
    before = files(run)
    assert RunStore(str(run)).load_checkpoint(TRIAL) is None  # neither is ever loaded
    assert main(["status", str(run)]) == 0  # whole archives: only a deep status loads them
    capsys.readouterr()
    assert main(["status", "--deep", str(run)]) == 1
    out = capsys.readouterr().out
    other_id = json.loads((other / "manifest.json").read_text())["run_id"]
    assert f"CHECKPOINT {planted} comes from another run (run_id {other_id}" in out
    assert f"CHECKPOINT {wrong_trial} belongs to trial resnet9-cifar10-s0, not {TRIAL}" in out
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint of epoch 3 rebuilt" in out and "checkpoint of epoch 4 rebuilt" in out
    after = files(run)
    assert {k: v for k, v in after.items() if not k.startswith("checkpoints/")} == {
        k: v for k, v in before.items() if not k.startswith("checkpoints/")
    }
    for epoch in (3, 4):
        rebuilt = torch.load(run / "checkpoints" / TRIAL / f"epoch-000{epoch}.pt", weights_only=True)
        original = torch.load(finished / "checkpoints" / TRIAL / f"epoch-000{epoch}.pt", weights_only=True)
        assert rebuilt["epoch"] == epoch
        for name, tensor in original["model"].items():
            assert torch.equal(rebuilt["model"][name], tensor), name
    assert main(["status", str(run)]) == 0


def test_a_lost_manifest_is_named_and_rebuilt_from_the_parquet_metadata(
    finished: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").unlink()
    assert main(["status", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == f"raysweep: error: {run} has results but no manifest.json: `raysweep resume {run}` rebuilds it from the Parquet files' metadata\n"
    assert main(["resume", str(run)]) == 0
    assert "rebuilt" in capsys.readouterr().out
    rebuilt = json.loads((run / "manifest.json").read_text())
    assert rebuilt["run_id"] == original["run_id"] and rebuilt["trials"] == original["trials"]
    assert main(["status", str(run)]) == 0  # the checkpoints still belong to the run


def test_a_stop_between_writing_an_epoch_and_its_checkpoint_does_not_measure_it_again(
    finished: Path, tmp_path: Path
) -> None:
    from raysweep.run import local

    store = RunStore(str(tmp_path / "run"))
    store.create({"run_id": "stopped"})
    trials = trial_configs(json.loads((finished / "manifest.json").read_text()))

    def stop_after_epoch_2(line: str) -> None:
        if "epoch 2/4" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        local.run_trials(store, trials, progress=stop_after_epoch_2)
    run = Path(store.root)
    (run / "checkpoints" / TRIAL / "epoch-0002.pt").unlink()  # as if stopped right after epoch 2's files
    before = files(run)
    local.run_trials(store, trials, progress=lambda line: None)
    after = files(run)
    assert all(after[k] == v for k, v in before.items() if k.endswith(".parquet"))  # epochs 1, 2 kept as written
    for table, frame in frames(finished).items():
        pd.testing.assert_frame_equal(frame, frames(run)[table], check_exact=True)


def test_a_stop_between_an_epochs_files_measures_that_epoch_again(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while it writes an epoch's tables: the restart must not take the epoch as written."""
    from raysweep.run import local

    store = RunStore(str(tmp_path / "run"))
    store.create({"run_id": "stopped"})
    trials = trial_configs(json.loads((finished / "manifest.json").read_text()))
    write = RunStore._write_bytes
    epoch_2_files: list[str] = []

    def stop_before_epoch_2s_last_table(self: RunStore, path: str, payload: bytes) -> None:
        if path.endswith("epoch-0002.parquet"):
            epoch_2_files.append(path)
            if len(epoch_2_files) == len(frames(finished)):
                raise KeyboardInterrupt
        write(self, path, payload)

    monkeypatch.setattr(RunStore, "_write_bytes", stop_before_epoch_2s_last_table)
    with pytest.raises(KeyboardInterrupt):
        local.run_trials(store, trials, progress=lambda line: None)
    monkeypatch.setattr(RunStore, "_write_bytes", write)
    local.run_trials(store, trials, progress=lambda line: None)
    for table, frame in frames(finished).items():
        pd.testing.assert_frame_equal(frame, frames(Path(store.root))[table], check_exact=True)


def test_an_unfinished_run_whose_last_epoch_is_damaged_recomputes_it_then_continues(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for table in ("epochs", "packets", "embeddings"):
        (run / table / f"trial={TRIAL}" / "epoch-0004.parquet").unlink()
    (run / "checkpoints" / TRIAL / "epoch-0004.pt").unlink()
    victim = run / "epochs" / f"trial={TRIAL}" / "epoch-0003.parquet"
    victim.write_bytes(b"not parquet")
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"[{TRIAL}] epoch 3 measured again" in out and "epoch 4/4" in out
    for table, frame in frames(finished).items():
        pd.testing.assert_frame_equal(frame, frames(run)[table], check_exact=True)
