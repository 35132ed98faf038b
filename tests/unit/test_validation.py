import numpy as np
import pytest

from art_backdoor_ext._validation import (
    Instance,
    Interval,
    Options,
    ParamsMixin,
    check_class_counts,
    check_images,
    check_labels,
    check_pytorch_classifier,
    validate_parameters,
)
from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError


def test_nhwc_is_named_in_the_error():
    x = np.zeros((2, 8, 8, 1), dtype=np.float32)
    with pytest.raises(DataError, match=r"channels-last.*\(N, 1, 8, 8\)"):
        check_images(x, input_shape=(1, 8, 8))


def test_wrong_shape_and_float64_and_range():
    with pytest.raises(DataError, match="expects"):
        check_images(np.zeros((2, 1, 9, 9), np.float32), input_shape=(1, 8, 8))
    with pytest.raises(DataError, match="float64"):
        check_images(np.zeros((2, 1, 8, 8)), input_shape=(1, 8, 8))
    with pytest.raises(DataError, match="divide by 255"):
        check_images(np.full((2, 1, 8, 8), 200, np.float32))
    with pytest.raises(DataError, match="NaN"):
        check_images(np.full((2, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(DataError, match="numpy array"):
        check_images([[0.0]])
    with pytest.raises(DataError, match="floating-point"):
        check_images(np.zeros((2, 1, 8, 8), np.uint8))


def test_float64_cast_when_allowed_returns_new_array():
    x = np.full((2, 1, 8, 8), 0.5)
    out = check_images(x, allow_float64=True)
    assert out.dtype == np.float32 and x.dtype == np.float64


def test_labels_one_hot_rejected_or_converted():
    y = np.eye(3)[[0, 2, 1]]
    with pytest.raises(DataError, match="one-hot"):
        check_labels(y, n_samples=3, nb_classes=3)
    np.testing.assert_array_equal(check_labels(y, n_samples=3, nb_classes=3, allow_one_hot=True), [0, 2, 1])
    with pytest.raises(DataError, match="valid labels 0..2"):
        check_labels(np.array([0, 3, 1]), n_samples=3, nb_classes=3)
    with pytest.raises(DataError, match="3 samples"):
        check_labels(np.array([0, 1]), n_samples=3, nb_classes=3)
    with pytest.raises(DataError, match="non-integer"):
        check_labels(np.array([0.5, 1, 1]), n_samples=3, nb_classes=3)


def test_class_counts():
    y = np.array([0, 0, 1, 1, 1])
    with pytest.raises(DataError, match=r"no samples of class\(es\) \[2\]"):
        check_class_counts(y, nb_classes=3, min_per_class=1)
    with pytest.raises(DataError, match=r"too few.*\{0: 2\}"):
        check_class_counts(y, nb_classes=2, min_per_class=3)
    np.testing.assert_array_equal(check_class_counts(y, nb_classes=2, min_per_class=2), [2, 3])


def test_constraints():
    table = {"n": [Interval(int, 1, None)], "mode": [Options(("a", "b"))], "fn": [Instance(callable), None]}
    validate_parameters("X", {"n": 3, "mode": "a", "fn": None}, table)
    with pytest.raises(InvalidParameterError, match=r"X: n must be an int in \[1, inf\], got 0"):
        validate_parameters("X", {"n": 0}, table)
    with pytest.raises(InvalidParameterError, match="got 2.0"):
        validate_parameters("X", {"n": 2.0}, table)
    with pytest.raises(InvalidParameterError, match="one of 'a', 'b'"):
        validate_parameters("X", {"mode": "c"}, table)
    with pytest.raises(InvalidParameterError, match="unknown parameter 'nn'"):
        validate_parameters("X", {"nn": 1}, table)
    with pytest.raises(InvalidParameterError, match="a callable or None"):
        validate_parameters("X", {"fn": 3}, table)
    with pytest.raises(InvalidParameterError):
        validate_parameters("X", {"n": True}, table)


class _Thing(ParamsMixin):
    _parameter_constraints = {"alpha": [Interval(float, 0, 1)]}

    def __init__(self, *, alpha=0.5):
        self.alpha = alpha
        self._check_params()


def test_params_mixin_round_trip_and_repr():
    t = _Thing(alpha=0.2)
    assert t.get_params() == {"alpha": 0.2}
    t.set_params(alpha=0.7)
    assert t.alpha == 0.7 and "alpha=0.7" in repr(t)
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        t.set_params(beta=1)
    with pytest.raises(InvalidParameterError):
        _Thing(alpha=2.0)


def test_non_pytorch_estimator_rejected():
    with pytest.raises(EstimatorError, match="PyTorchClassifier"):
        check_pytorch_classifier(object(), "Detector")
