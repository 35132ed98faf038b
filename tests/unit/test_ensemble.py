"""Tests of art_backdoor_ext.ensemble: batched == sequential, learning, checkpoints, validation."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import art_backdoor_ext.ensemble as ensemble
from art_backdoor_ext.attacks.jumbo import JumboContamination
from art_backdoor_ext.ensemble import checkpoint_path, profile_training, train_ensemble, train_sequential
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN

KW = {"nb_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "device": "cpu", "random_state": 0}


def _factory(i: int) -> nn.Module:
    return DigitsCNN(width=4)


@pytest.fixture(scope="module")
def subsets(digits):
    rng = np.random.default_rng(0)
    out = []
    for n in (60, 75, 44):  # different lengths, one not a multiple of the batch size
        idx = rng.choice(len(digits.x_train), size=n, replace=False)
        out.append((digits.x_train[idx], digits.y_train[idx]))
    return out


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def test_batched_equals_sequential(subsets):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002 (global RNG untouched?)
    batched = train_ensemble(_factory, subsets, models_per_chunk=2, **KW)  # chunks of 2 and 1
    sequential = train_sequential(_factory, subsets, **KW)
    assert len(batched) == len(sequential) == 3
    for a, b in zip(batched, sequential):
        assert _max_diff(a, b) < 1e-5
        assert not a.training and next(a.parameters()).device.type == "cpu"
    # one chunk of 3 gives the same models: each depends only on (random_state, index, its data)
    together = train_ensemble(_factory, subsets, models_per_chunk=3, **KW)
    assert all(_max_diff(a, b) < 1e-5 for a, b in zip(batched, together))
    assert torch.equal(torch.get_rng_state(), torch_state)  # global RNGs untouched
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002
    fresh = [_factory(i) for i in range(3)]
    assert all(_max_diff(m, f) > 1e-3 for m, f in zip(batched, fresh))  # it trained
    assert _max_diff(batched[0], batched[1]) > 1e-3  # models differ (own init and data)
    other_seed = train_ensemble(_factory, subsets[:1], **{**KW, "random_state": 1})
    assert _max_diff(other_seed[0], batched[0]) > 1e-3


def test_models_learn_their_own_data(digits):
    x, y = digits.x_train[:200], digits.y_train[:200]
    flipped = (y + 1) % 10  # a second dataset with permuted labels: each model must fit its own
    models = train_ensemble(lambda i: DigitsCNN(width=8), [(x, y), (x, flipped)], nb_epochs=15, batch_size=32,
                            learning_rate=1e-2, device="cpu", random_state=1)
    with torch.no_grad():
        pred = [m(torch.as_tensor(x)).argmax(1).numpy() for m in models]
    assert np.mean(pred[0] == y) > 0.6 and np.mean(pred[1] == flipped) > 0.6  # chance: 0.1
    assert np.mean(pred[0] == flipped) < 0.3


def test_accepts_lazy_shadow_datasets_and_one_hot(subsets):
    x, y = subsets[0]
    shadows = JumboContamination(nb_classes=10, random_state=0).generate_shadow_datasets(x, y, 2)
    models = train_ensemble(_factory, shadows, **{**KW, "nb_epochs": 1})
    assert len(models) == 2
    one_hot = [(xs, np.eye(10, dtype=np.float32)[ys]) for xs, ys in subsets[:1]]
    a = train_ensemble(_factory, one_hot, **{**KW, "nb_epochs": 1})
    b = train_ensemble(_factory, subsets[:1], **{**KW, "nb_epochs": 1})
    assert _max_diff(a[0], b[0]) == 0.0


def test_checkpoint_resume_skips_finished_models(subsets, tmp_path, monkeypatch):
    first = train_ensemble(_factory, subsets, checkpoint_dir=tmp_path, models_per_chunk=2, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0000.pt", "model_0001.pt", "model_0002.pt"]

    trained: list[int] = []
    original = ensemble._train_batched

    def counting(factory, jobs, device, hyper):
        trained.extend(job.index for job in jobs)
        return original(factory, jobs, device, hyper)

    monkeypatch.setattr(ensemble, "_train_batched", counting)
    again = train_ensemble(_factory, subsets, checkpoint_dir=tmp_path, models_per_chunk=2, **KW)
    assert trained == []
    assert all(_max_diff(a, b) == 0.0 for a, b in zip(first, again))

    checkpoint_path(tmp_path, 1).unlink()  # as if the run had stopped before model 1 was saved
    resumed = train_ensemble(_factory, subsets, checkpoint_dir=tmp_path, models_per_chunk=2, **KW)
    assert trained == [1]
    assert all(_max_diff(a, b) < 1e-6 for a, b in zip(first, resumed))
    assert checkpoint_path(tmp_path, 1).exists()
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(DataError, match="nb_epochs: saved 2, requested 3"):
        train_ensemble(_factory, subsets, checkpoint_dir=tmp_path, **{**KW, "nb_epochs": 3})


class _Payload:
    """Not a tensor: torch.load(weights_only=True) must refuse to unpickle it."""


def test_checkpoint_with_pickled_object_is_refused(subsets, tmp_path):
    torch.save({"state_dict": _Payload(), "config": {}}, checkpoint_path(tmp_path, 0))
    with pytest.raises(DataError, match=r"weights_only=True"):
        train_ensemble(_factory, subsets[:1], checkpoint_dir=tmp_path, **KW)
    torch.save({"weights": torch.zeros(1)}, checkpoint_path(tmp_path, 0))
    with pytest.raises(DataError, match="not an ensemble checkpoint"):
        train_sequential(_factory, subsets[:1], checkpoint_dir=tmp_path, **KW)


class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nb_epochs": 0}, "train_ensemble: nb_epochs must be an int in"),
        ({"batch_size": 1.5}, "batch_size must be an int in"),
        ({"learning_rate": 0.0}, "learning_rate must be a number in"),
        ({"betas": (0.9, 1.0)}, r"betas must be a pair \(beta1, beta2\) in \[0, 1\)"),
        ({"betas": 0.9}, "betas must be a pair"),
        ({"eps": -1.0}, "eps must be a number in"),
        ({"models_per_chunk": 0}, "models_per_chunk must be an int in"),
        ({"device": 0}, "device must be"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be"),
        ({"random_state": -2}, "random_state must be"),
        ({"verbose": 1}, "verbose must be"),
    ],
)
def test_rejects_bad_parameters(subsets, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        train_ensemble(_factory, subsets, **{**KW, **kwargs})


def test_rejects_bad_models_and_data(subsets):
    x, y = subsets[0]
    with pytest.raises(InvalidParameterError, match="model_factory must be a callable"):
        train_ensemble("DigitsCNN", subsets, **KW)
    with pytest.raises(InvalidParameterError, match="BatchNorm2d"):
        train_ensemble(lambda i: _WithBatchNorm(), subsets, **KW)
    with pytest.raises(InvalidParameterError, match="must return an nn.Module"):
        train_sequential(lambda i: None, subsets, **KW)
    with pytest.raises(InvalidParameterError, match="different architecture"):
        train_ensemble(lambda i: DigitsCNN(width=4 + i), subsets, **KW)
    with pytest.raises(InvalidParameterError, match="datasets must be a sequence or iterable"):
        train_ensemble(_factory, 3, **KW)
    with pytest.raises(DataError, match="dataset 0 must be an"):
        train_ensemble(_factory, [x], **KW)
    with pytest.raises(DataError, match="one label per sample"):
        train_ensemble(_factory, [(x, y[:-1])], **KW)
    with pytest.raises(DataError, match="floating-point"):
        train_ensemble(_factory, [(x.astype(np.int64), y)], **KW)
    with pytest.raises(DataError, match="class indices >= 0"):
        train_ensemble(_factory, [(x, y - 1)], **KW)
    with pytest.raises(DataError, match="has label 10 but the model has 10 outputs"):
        train_sequential(_factory, [(x, y + 1)], **KW)
    with pytest.raises(DataError, match="has label 10 but the model has 10 outputs"):
        train_ensemble(_factory, [(x, y + 1)], **KW)
    with pytest.raises(DataError, match="samples of shape"):
        train_ensemble(_factory, [(x, y), (x[:, :, :4], y)], **KW)


def test_profile_training_reports_cost(subsets):
    models, profile = profile_training(train_ensemble, _factory, subsets[:2], **{**KW, "nb_epochs": 1})
    assert len(models) == 2 and profile.n_models == 2 and profile.trainer == "train_ensemble"
    assert profile.seconds > 0 and profile.max_rss_bytes > 0 and profile.peak_cuda_bytes is None
    assert json.loads(json.dumps(profile.to_dict()))["n_models"] == 2


def test_profile_training_sees_peak_memory_of_the_call():
    def hungry(_factory, datasets, **_kw):
        block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, touched, freed before returning
        time.sleep(0.05)
        del block
        return []

    def frugal(_factory, datasets, **_kw):
        time.sleep(0.05)
        return []

    _, big = profile_training(hungry, _factory, [])
    _, small = profile_training(frugal, _factory, [])
    assert big.peak_rss_increase_bytes >= 150 * 2**20  # the freed block is still seen as the peak
    assert small.peak_rss_increase_bytes < 50 * 2**20
    assert json.loads(json.dumps(big.to_dict()))["peak_rss_increase_bytes"] == big.peak_rss_increase_bytes
