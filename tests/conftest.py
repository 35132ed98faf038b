"""Shared fixtures: tiny seeded digits data and a small trained victim, built once per session."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from art_backdoor_ext.datasets import load_digits, sample_per_class
from art_backdoor_ext.models import DigitsCNN, make_classifier


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _single_threaded_blas():
    """Tiny models and matrices: one BLAS/OpenMP and one torch thread avoid oversubscription on 2-core machines."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    return load_digits()


def white_patch(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[..., -2:, -2:] = 1.0
    return out


@pytest.fixture(scope="session")
def badnets_victim(digits):
    """DigitsCNN trained on digits with a 2x2 white patch, all-to-one target 0, 5% poisoned (1/3 of class 0)."""
    from art_backdoor_ext.training import train_victim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = make_classifier(DigitsCNN(), device_type="cpu")
    return train_victim(classifier, digits.x_train, digits.y_train, digits.x_test, digits.y_test, white_patch,
                        target=0, rate=0.05, nb_epochs=12, learning_rate=3e-3, random_state=0)


@pytest.fixture(scope="session")
def small_set(badnets_victim):
    """6 images per class of the badnets victim's (poisoned) training set: the conformance batteries' input."""
    data = badnets_victim.data
    return sample_per_class(data.x, data.y, 6, random_state=0)


@pytest.fixture()
def fresh_classifier():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return make_classifier(DigitsCNN(), device_type="cpu")


@pytest.fixture(autouse=True)
def _close_figures():
    """Every test's matplotlib figures are closed afterwards (pyplot keeps them open and warns past 20)."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")
