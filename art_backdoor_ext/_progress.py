"""Progress bars through ``tqdm.auto``, shown only when ``verbose`` is true."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T], *, verbose: bool, desc: str, total: int | None = None, **kwargs: Any
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when ``verbose``; otherwise return it unchanged."""
    if not verbose:
        return iter(iterable)
    return iter(tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kwargs))
