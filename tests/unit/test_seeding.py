# ruff: noqa: NPY002  (these tests exercise the legacy global state on purpose)
import numpy as np
import pytest

from art_backdoor_ext._seeding import numpy_global_seed
from art_backdoor_ext.exceptions import InvalidParameterError


def test_same_seed_same_draws_and_the_outer_state_is_restored():
    np.random.seed(11)
    expected_outer = np.random.rand(3)
    np.random.seed(11)
    with numpy_global_seed(5):
        first = np.random.rand(4)
    outer = np.random.rand(3)
    with numpy_global_seed(5):
        second = np.random.rand(4)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(outer, expected_outer)


def test_state_is_restored_when_the_block_raises():
    np.random.seed(3)
    expected = np.random.rand()
    np.random.seed(3)
    with pytest.raises(ValueError), numpy_global_seed(9):
        raise ValueError("boom")
    assert np.random.rand() == expected


def test_none_leaves_the_global_state_alone():
    np.random.seed(4)
    expected = np.random.rand(2)
    np.random.seed(4)
    with numpy_global_seed(None):
        inside = np.random.rand(2)
    np.testing.assert_array_equal(inside, expected)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "3"])
def test_bad_seed_is_a_clear_error(seed):
    with pytest.raises(InvalidParameterError, match="seed"):
        with numpy_global_seed(seed):
            pass
