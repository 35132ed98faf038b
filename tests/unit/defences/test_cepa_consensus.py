"""CEPA.trigger_consensus: sigma / ||mu|| of a known trigger's embedded shifts, checked on a linear layer."""

import numpy as np
import pytest
import torch
from torch import nn

from art_backdoor_ext.defences.model.cepa import CEPA
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.models import make_classifier


class _Linear(nn.Module):
    """flatten -> linear (the analysed layer, no activation after it) -> relu -> logits."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (1, 4, 4)
        self.nb_classes = 3
        self.flatten = nn.Flatten()
        self.embed = nn.Linear(16, 6)
        self.relu = nn.ReLU()
        self.logits = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.relu(self.embed(self.flatten(x))))


@pytest.fixture(scope="module")
def detector():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _Linear()
    return CEPA(make_classifier(model, device_type="cpu"), layers=["embed", "relu"])


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0.2, 0.8, size=(12, 1, 4, 4)).astype(np.float32)


def test_an_additive_trigger_is_fully_consensual_in_a_linear_layer(detector, images):
    shifted = images + 0.1 * np.sign(np.random.default_rng(1).standard_normal((1, 1, 4, 4))).astype(np.float32)
    out = detector.trigger_consensus(images, shifted)
    # embed(x + v) - embed(x) = W v for every image: no spread about the common shift
    assert set(out) == {"embed", "relu"}
    assert out["embed"]["sigma"] == pytest.approx(0.0, abs=1e-5) and out["embed"]["mu_norm"] > 0.01
    assert out["embed"]["ratio"] == pytest.approx(0.0, abs=1e-3)


def test_a_dimming_trigger_matches_the_closed_form_spread(detector, images):
    dimmed = 0.5 * images
    out = detector.trigger_consensus(images, dimmed, layers="embed")
    w = detector.classifier.model.embed.weight.detach().double().numpy()
    shifts = -0.5 * images.reshape(len(images), -1).astype(np.float64) @ w.T  # embed(x/2) - embed(x) = -W x / 2
    mu = shifts.mean(0)
    sigma = np.sqrt(((shifts - mu) ** 2).sum(1).mean())
    assert out["embed"]["mu_norm"] == pytest.approx(np.linalg.norm(mu), rel=1e-4)
    assert out["embed"]["sigma"] == pytest.approx(sigma, rel=1e-4)
    assert out["embed"]["ratio"] == pytest.approx(sigma / np.linalg.norm(mu), rel=1e-4)


def test_inputs_are_not_mutated(detector, images):
    before, shifted = images.copy(), np.clip(images + 0.05, 0, 1)
    shifted_before = shifted.copy()
    detector.trigger_consensus(images, shifted)
    np.testing.assert_array_equal(images, before)
    np.testing.assert_array_equal(shifted, shifted_before)


def test_bad_input_gets_clear_errors(detector, images):
    with pytest.raises(DataError, match="same shape"):
        detector.trigger_consensus(images, images[:5])
    with pytest.raises(DataError, match="at least 2"):
        detector.trigger_consensus(images[:1], images[:1])
    with pytest.raises(InvalidParameterError, match="embed"):  # the error lists the valid layer names
        detector.trigger_consensus(images, images, layers="nope")
    with pytest.raises(DataError):
        detector.trigger_consensus(images.transpose(0, 2, 3, 1), images.transpose(0, 2, 3, 1))
