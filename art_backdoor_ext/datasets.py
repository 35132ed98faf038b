"""Datasets from local files only: nothing is ever downloaded.

- :func:`load_digits`: scikit-learn's 8x8 digits (ships with scikit-learn; the embedded default).
- :func:`load_fashion_mnist`: IDX gz files; defaults to the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or ``$ART_BACKDOOR_EXT_FASHION_MNIST``.
- :func:`load_mnist`: IDX gz files from a folder you provide.
- :func:`load_cifar10`: the standard python pickle batches (``cifar-10-batches-py``) from a folder you provide.

Every loader returns a :class:`Dataset` of float32 NCHW images in [0, 1] and int64 labels.
Missing files raise :class:`~art_backdoor_ext.exceptions.DataError` naming where it looked and how to get them.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = [
    "Dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_cifar10",
    "load_dataset",
    "DataSplit",
    "split_for_defence",
    "sample_per_class",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_DEFAULT_ROOT",
]

FASHION_MNIST_ENV = "ART_BACKDOOR_EXT_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass
class Dataset:
    """Train and test arrays: x float32 (N, C, H, W) in [0, 1], y int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    nb_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits(*, test_fraction: float = 0.25, random_state: int = 0) -> Dataset:
    """scikit-learn's digits (1,797 images, 8x8, 10 classes) split stratified into train and test."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=random_state)
    return Dataset(x_tr, y_tr, x_te, y_te, "digits", 10)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (f"{stem}.gz", stem, f"{stem.replace('-idx', '.idx')}.gz"):
        if (root / candidate).exists():
            return root / candidate
    return None


def _load_idx_folder(root: Path, name: str, how_to_get: str) -> Dataset:
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    paths = {key: _find(root, stem) for key, stem in stems.items()}
    missing = [stems[k] + ".gz" for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{name}: looked in {root} and did not find {', '.join(missing)}. {how_to_get}")
    arrays = {key: _read_idx(p) for key, p in paths.items() if p is not None}
    x_train = (arrays["x_train"].astype(np.float32) / 255.0)[:, None]
    x_test = (arrays["x_test"].astype(np.float32) / 255.0)[:, None]
    return Dataset(x_train, arrays["y_train"].astype(np.int64), x_test, arrays["y_test"].astype(np.int64), name, 10)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST (60,000 + 10,000, 28x28, 10 classes) from IDX gz files.

    :param root: Folder with the four ``*-ubyte.gz`` files; defaults to ``$ART_BACKDOOR_EXT_FASHION_MNIST``
        or the Debian package's folder ``/usr/share/datasets/fashion-mnist``.
    """
    folder = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT)
    return _load_idx_folder(
        folder,
        "fashion-mnist",
        "Install the Debian package (apt-get install dataset-fashion-mnist), or put the files from "
        f"https://github.com/zalandoresearch/fashion-mnist in a folder and pass root= or set {FASHION_MNIST_ENV}.",
    )


def load_mnist(root: str | os.PathLike[str]) -> Dataset:
    """MNIST from the four IDX gz files in ``root`` (nothing is downloaded)."""
    return _load_idx_folder(
        Path(root), "mnist", "Download the four files of http://yann.lecun.com/exdb/mnist/ into that folder."
    )


def load_cifar10(root: str | os.PathLike[str]) -> Dataset:
    """CIFAR-10 from the python pickle batches (``data_batch_1..5``, ``test_batch``) in ``root``.

    The batches are plain dicts of arrays written by the dataset's authors; they are read with
    ``pickle`` restricted to numpy arrays, lists and bytes (no arbitrary classes).
    """
    import pickle

    class _SafeUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and name in (
                "_reconstruct", "ndarray", "dtype", "scalar"
            ):
                return super().find_class(module, name)
            raise DataError(f"refusing to unpickle {module}.{name} from a CIFAR-10 batch")

    folder = Path(root)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise DataError(
            f"cifar10: looked in {folder} and did not find {', '.join(missing)}. Download and extract "
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into that folder."
        )

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / name, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return x, np.asarray(batch[b"labels"], dtype=np.int64)

    parts = [read(n) for n in names[:5]]
    x_test, y_test = read("test_batch")
    return Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   x_test, y_test, "cifar10", 10)


def load_dataset(name: str, root: str | None = None) -> Dataset:
    """Load by name: ``digits``, ``fashion-mnist``, ``mnist``, ``cifar10``."""
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name in ("mnist", "cifar10"):
        if root is None:
            raise DataError(f"{name} needs root=<folder with the files>; nothing is downloaded")
        return load_mnist(root) if name == "mnist" else load_cifar10(root)
    raise InvalidParameterError(f"unknown dataset {name!r}; choose digits, fashion-mnist, mnist or cifar10")


@dataclass
class DataSplit:
    """The papers' data roles: defender's clean reserve, attacker's training set, and the rest."""

    x_reserved: np.ndarray
    y_reserved: np.ndarray
    x_attacker: np.ndarray
    y_attacker: np.ndarray
    x_rest: np.ndarray
    y_rest: np.ndarray


def split_for_defence(
    x: np.ndarray, y: np.ndarray, *, reserved_fraction: float = 0.04, attacker_fraction: float = 0.5,
    random_state: int | None = None,
) -> DataSplit:
    """Stratified split into the defender's reserve (e.g. 4%), the attacker's share (e.g. 50%) and the rest."""
    if not 0 < reserved_fraction < 1 or not 0 < attacker_fraction < 1 or reserved_fraction + attacker_fraction > 1:
        raise InvalidParameterError(
            "reserved_fraction and attacker_fraction must lie in (0, 1) with a sum <= 1, got "
            f"{reserved_fraction} and {attacker_fraction}"
        )
    rng = np.random.default_rng(random_state)
    reserved, attacker, rest = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_res = int(round(reserved_fraction * len(idx)))
        n_att = int(round(attacker_fraction * len(idx)))
        reserved.append(idx[:n_res])
        attacker.append(idx[n_res:n_res + n_att])
        rest.append(idx[n_res + n_att:])
    r, a, o = (np.sort(np.concatenate(parts)) for parts in (reserved, attacker, rest))
    return DataSplit(x[r], y[r], x[a], y[a], x[o], y[o])


def sample_per_class(
    x: np.ndarray, y: np.ndarray, n_per_class: int, *, random_state: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """N clean samples per class (fewer available raises a DataError naming the class)."""
    rng = np.random.default_rng(random_state)
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < n_per_class:
            raise DataError(f"class {int(c)} has {len(idx)} samples but {n_per_class} per class were requested")
        chosen.append(rng.choice(idx, size=n_per_class, replace=False))
    order = np.sort(np.concatenate(chosen))
    return x[order], y[order]
