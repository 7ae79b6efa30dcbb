"""The trial loop on synthetic data: rows, determinism, resume, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raysweep.core.config import TrialConfig
from raysweep.core.threat import MNIST_PGD, PAPER_PGD
from raysweep.run.config import replace, trial_config
from raysweep.errors import UserError
from raysweep.core.trial import EpochResult, Trial
from oracles import assert_bound_holds

TINY = trial_config(
    arch="mnist_conv3", dataset="synthetic", epochs=2, dims=4, nodes=8, head_epochs=1, embed_points=16,
    limit_train=192, limit_test=64, attacks=f"{PAPER_PGD}+{MNIST_PGD}", chunk=3,
)


def run(config: TrialConfig) -> list[EpochResult]:
    trial = Trial(config)
    return [trial.run_epoch() for _ in range(config.train.epochs)]


def assert_same_results(left: list[EpochResult], right: list[EpochResult]) -> None:
    for a, b in zip(left, right, strict=True):
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(a.metrics) == strip(b.metrics)
        assert a.packets.keys() == b.packets.keys()
        for key in a.packets:
            np.testing.assert_array_equal(a.packets[key], b.packets[key], err_msg=key)
        for key in ("pred", "label", "kind"):
            np.testing.assert_array_equal(a.embeddings[key], b.embeddings[key])


def test_epoch_yields_a_row_per_space_and_attack_and_a_packet_per_pair() -> None:
    results = run(TINY)
    for result in results:
        assert [(m["space"], m["attack"]) for m in result.metrics] == [
            (s, a) for s in ("pixel", "feature") for a in (PAPER_PGD, MNIST_PGD)
        ]
        assert len(result.packets["sx"]) == 2 * 4 * 10  # spaces x K x classes
        # robust <= clean holds by construction; that the attack bites is what could fail:
        assert all(m["robust_acc"] < m["test_acc"] for m in result.metrics if m["attack"] == MNIST_PGD)
        assert len(result.embeddings["coords"]) == 2 * 16  # clean and attacked points
    feature = [m for m in results[0].metrics if m["space"] == "feature"]
    assert feature[0]["eps"] == pytest.approx(8 / 255 * feature[0]["budget_scale"])


def real_pairs(packets: dict[str, np.ndarray]) -> np.ndarray:
    """Rows with a packet; a feature constant over the training set (a = b) has none: beta = 0, NaN."""
    real = packets["beta"] > 0
    assert np.all(packets["space"][~real] == "feature")
    assert np.all(np.isnan(packets["sx"][~real]))
    assert real.mean() > 0.5
    return real


def test_every_pair_satisfies_the_finite_interval_bound() -> None:
    for result in run(TINY):
        p = result.packets
        real = real_pairs(p)
        assert_bound_holds((p["sx"] * p["sp"])[real], p["bound"][real], p["boundary_term"][real])


def test_dimensions_are_drawn_once_and_reused_every_epoch() -> None:
    first, second = run(TINY)
    np.testing.assert_array_equal(first.packets["dim"], second.packets["dim"])
    assert len(np.unique(first.packets["dim"][first.packets["space"] == "pixel"])) == 4


def test_same_seed_gives_the_same_rows_and_another_seed_does_not() -> None:
    assert_same_results(run(TINY), run(TINY))
    other = run(replace(TINY, seed=1))
    assert not np.array_equal(other[0].packets["dim"], run(TINY)[0].packets["dim"])


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run() -> None:
    config = replace(TINY, estimator="mc", nodes=16, replicates=4)
    straight = run(config)
    first = Trial(config)
    results = [first.run_epoch()]
    state = first.state_dict()
    resumed = Trial(config)
    resumed.load_state_dict(state)
    results.append(resumed.run_epoch())
    assert_same_results(straight, results)
    assert resumed.done


def test_monte_carlo_nodes_are_the_same_in_another_process() -> None:
    # Chunk seeds must not depend on Python's per-process hash salt, or a resumed run or a
    # Ray worker would draw other nodes than the process that started the trial.
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_trial import TINY, replace, run; "
        "r = run(replace(TINY, epochs=1, estimator='mc', nodes=16, replicates=4, spaces='pixel'))[0]; "
        "print(repr(r.packets['sx'].tolist()))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": salt}, cwd=Path(__file__).parents[1],
        ).stdout
        for salt in ("1", "2")
    }
    assert len(outputs) == 1


def test_monte_carlo_rows_carry_standard_errors() -> None:
    (result, _) = run(replace(TINY, estimator="mc", nodes=16, replicates=4))
    real = real_pairs(result.packets)
    assert np.all(result.packets["err_sx"][real] > 0) and np.all(np.isfinite(result.packets["err_sp"][real]))
    assert set(result.packets["estimator"]) == {"mc"}


def test_pixel_only_runs_skip_the_feature_space() -> None:
    (result, _) = run(replace(TINY, spaces="pixel"))
    assert {m["space"] for m in result.metrics} == {"pixel"}
    assert set(result.packets["space"]) == {"pixel"}


def test_all_dimensions_when_dims_is_unset() -> None:
    config = replace(
        TINY, dataset="synthetic:1x28x28", dims=None, spaces="pixel", epochs=1, estimator="gauss", nodes=4, chunk=None
    )
    (result,) = run(config)
    assert len(result.packets["sx"]) == 28 * 28 * 10
    assert sorted(set(result.packets["dim"])) == list(range(28 * 28))


def test_more_dims_than_the_space_has_names_the_limit() -> None:
    with pytest.raises(UserError, match="dims=5000 but the pixel space has only 784 dimensions"):
        Trial(replace(TINY, dims=5000))


def test_architecture_that_does_not_fit_the_data_names_both() -> None:
    with pytest.raises(UserError, match="arch=cifar_conv4 \\(it expects 3x32x32\\) does not fit dataset=synthetic"):
        Trial(replace(TINY, arch="cifar_conv4"))


def test_nan_loss_stops_with_the_epoch_and_stage() -> None:
    trial = Trial(TINY)
    trial.run_epoch()
    trial.data.x_train[5, 0, 3, 3] = float("nan")
    with pytest.raises(UserError, match=r"^epoch 2: the train loss became nan \(stage: train\); lower the learning rate"):
        trial.run_epoch()
    assert trial.epoch == 1  # the finished epoch stands


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_packet_value_stops_with_the_epoch_and_stage(value: float) -> None:
    from raysweep.core.trial import run_local

    def overflowing(tasks, on_done):  # a packet task whose loss overflowed in one pair of the feature space
        results = run_local(tasks, on_done)
        for task, stats in zip(tasks, results, strict=True):
            if task.space == "feature":
                stats.sp[0, 3] = value
        return results

    trial = Trial(TINY)
    trial.run_epoch()
    with pytest.raises(UserError, match=r"^epoch 2: non-finite packet values in feature space \(stage: packets\)"):
        trial.run_epoch(overflowing)


def test_an_infinite_training_loss_stops_with_the_epoch_and_stage() -> None:
    from raysweep.core import train

    model = torch.nn.Linear(4, 2)
    with torch.no_grad():  # finite logits (3e38, -3e38) for label 1: a cross-entropy of 6e38, +inf in float32
        model.weight.copy_(torch.tensor([[0.75e38] * 4, [-0.75e38] * 4]))
        model.bias.zero_()
    optimizer, _ = train.make_optimizer(model, train.ADAM, 1)
    x, y = torch.ones(8, 4), torch.ones(8, dtype=torch.long)
    with pytest.raises(UserError, match=r"^epoch 7: the feature-head loss became inf \(stage: feature-head\)"):
        train.train_epoch(model, optimizer, None, x, y, train.ADAM, generator=torch.Generator(), epoch=7, stage="feature-head")


def test_unknown_attack_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown or malformed attack .cw:eps=1.: write it as"):
        Trial(replace(TINY, attacks="cw:eps=1"))


def test_auto_estimator_walks_relu_nets_exactly() -> None:
    (result, _) = run(replace(TINY, estimator="auto"))
    assert set(result.packets["estimator"]) == {"piecewise"}
    real = real_pairs(result.packets)
    p = result.packets
    assert np.all(p["nodes"][real] >= 2)  # evaluations per dimension: its pieces and the check at b
    assert_bound_holds((p["sx"] * p["sp"])[real], p["bound"][real], p["boundary_term"][real])


def test_unknown_estimator_names_the_choices() -> None:
    with pytest.raises(UserError, match="estimator='simpson': use one of auto, piecewise, gauss, mc"):
        replace(TINY, estimator="simpson")


@pytest.mark.parametrize("units, expected", [(8, "piecewise"), (2048, "gauss")])
def test_auto_estimator_takes_gauss_where_kinks_are_too_dense_to_walk(units: int, expected: str) -> None:
    from raysweep.core import piecewise
    from raysweep.core.packets import AUTO_MAX_PIECES, choose

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, units), torch.nn.ReLU(), torch.nn.Linear(units, 10))
    with torch.no_grad():  # unit u's kink on either walked line lies at t = U(0, 1)
        net[1].weight[:, :2] = 1.0
        net[1].bias.copy_(-torch.rand(units) - 0.5 - net[1].weight[:, 2:].sum(1) * 0.5)
    x_base = torch.full((1, 4, 4), 0.5)
    dims, a, b = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    pieces = piecewise.walk(net.eval(), x_base, dims, a, b).count
    # the oracle: one kink per unit (kinks closer than the walk's step-in merge)
    assert all(0.99 * units < n <= units + 1 for n in pieces.tolist())
    assert choose(net, x_base, dims, a, b) == expected
    assert (units + 1 > AUTO_MAX_PIECES) == (expected == "gauss")


def test_auto_estimator_sees_dense_kinks_without_walking(monkeypatch) -> None:
    from raysweep.core import piecewise
    from raysweep.core.packets import choose

    def no_walk(*args, **kwargs):
        raise AssertionError("walked lines whose pattern changes in every gap")

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 10))
    with torch.no_grad():  # 4,096 kinks at t = U(0, 1) on line 0: about 16 per gap of the probe
        net[1].weight[:, 0] = 1.0
        net[1].bias.copy_(-torch.rand(4096) - net[1].weight[:, 1:].sum(1) * 0.5)
    monkeypatch.setattr(piecewise, "walk", no_walk)
    zeros, ones = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    assert choose(net.eval(), torch.full((1, 4, 4), 0.5), torch.tensor([0]), zeros, ones) == "gauss"


def test_default_chunk_is_64_dims_on_the_cpu_and_one_task_per_worker_on_a_gpu() -> None:
    trial = Trial(replace(TINY, chunk=None, workers=3, epochs=1))
    assert trial._default_chunk(3072) == 64 and len(trial._packet_tasks("pixel", trial.model, trial.x_base, 0.0, 1.0, 1)) == 1
    trial.device = torch.device("cuda")  # only the rule is under test: nothing runs there
    assert trial._default_chunk(3072) == 1024 and trial._default_chunk(3073) == 1025 and trial._default_chunk(0) == 1
