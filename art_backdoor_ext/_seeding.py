"""Reproducible runs of third-party code that draws from NumPy's global random state.

ART's ``ActivationDefence`` builds scikit-learn's ``KMeans`` (and, for large inputs, a randomised PCA) without a
``random_state``, so they draw from NumPy's global generator and the same call on the same data can flag
different samples from one run to the next. :func:`numpy_global_seed` seeds that generator for the duration of
a call and puts the caller's state back afterwards, so the comparison rows this package produces for ART's
detectors are reproducible and nothing outside the block is disturbed.

This module imports nothing from the rest of the package except the exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["numpy_global_seed"]


@contextmanager
def numpy_global_seed(seed: int | None) -> Iterator[None]:
    """Seed NumPy's global random state inside the block and restore the previous state on exit.

    :param seed: ``0 <= seed < 2**32``; ``None`` leaves the global state alone (the block draws from it as usual).
    :raises InvalidParameterError: a seed NumPy cannot use.

    >>> import numpy as np
    >>> with numpy_global_seed(3):
    ...     a = np.random.rand()
    >>> with numpy_global_seed(3):
    ...     b = np.random.rand()
    >>> a == b
    True
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise InvalidParameterError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    # The legacy global state is the one third-party code draws from, so it is the one to seed.
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(int(seed))  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002
