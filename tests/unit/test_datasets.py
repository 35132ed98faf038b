import gzip
import os
import pickle

import numpy as np
import pytest

from art_backdoor_ext.datasets import (
    FASHION_MNIST_DEFAULT_ROOT,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    sample_per_class,
    split_for_defence,
)
from art_backdoor_ext.exceptions import DataError, InvalidParameterError


def test_digits_layout():
    d = load_digits()
    assert d.x_train.dtype == np.float32 and d.x_train.shape[1:] == (1, 8, 8)
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1 and d.x_train.max() > 0.9
    assert d.y_train.dtype == np.int64 and set(np.unique(d.y_train)) == set(range(10))
    assert len(d.x_train) + len(d.x_test) == 1797


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    d = load_mnist(tmp_path)
    np.testing.assert_allclose(d.x_train[:, 0], imgs / 255.0, atol=1e-6)
    np.testing.assert_array_equal(d.y_test, labels)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=f"looked in {tmp_path}.*yann.lecun"):
        load_mnist(tmp_path)
    monkeypatch.setenv("ART_BACKDOOR_EXT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()
    with pytest.raises(DataError, match="cifar-10-python"):
        load_cifar10(tmp_path)
    with pytest.raises(DataError, match="needs root"):
        load_dataset("mnist")
    with pytest.raises(InvalidParameterError, match="unknown dataset"):
        load_dataset("imagenet")


def test_cifar_pickles(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    d = load_cifar10(tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.y_test.tolist() == [0, 1, 2, 3]


def test_cifar_refuses_arbitrary_objects(tmp_path):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": os.getcwd, b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_cifar10(tmp_path)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DEFAULT_ROOT), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    d = load_fashion_mnist()
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(d.y_train).tolist() == [6000] * 10


def test_split_for_defence_is_stratified_and_disjoint():
    y = np.repeat(np.arange(4), 50)
    x = np.arange(200, dtype=np.float32)[:, None]
    s = split_for_defence(x, y, reserved_fraction=0.1, attacker_fraction=0.5, random_state=0)
    assert np.bincount(s.y_reserved).tolist() == [5] * 4 and np.bincount(s.y_attacker).tolist() == [25] * 4
    all_ids = np.concatenate([s.x_reserved, s.x_attacker, s.x_rest])[:, 0]
    assert sorted(all_ids.tolist()) == list(range(200))
    with pytest.raises(InvalidParameterError, match="sum <= 1"):
        split_for_defence(x, y, reserved_fraction=0.6, attacker_fraction=0.6)


def test_sample_per_class():
    y = np.array([0] * 5 + [1] * 3)
    x = np.arange(8)
    xs, ys = sample_per_class(x, y, 3, random_state=0)
    assert np.bincount(ys).tolist() == [3, 3]
    with pytest.raises(DataError, match="class 1 has 3 samples but 4"):
        sample_per_class(x, y, 4)
