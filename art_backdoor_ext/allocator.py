"""Keep freed CPU memory in the process for reuse, so that PyTorch's large CPU tensors are not mapped and unmapped
on every pass.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults, blocks above a dynamic
threshold are mapped from the kernel and unmapped when freed, and free memory at the top of the heap is handed back
beyond a small trim threshold; the next pass gets fresh pages, which the kernel must fault in and zero. The batched
computations of this package (all class pairs of an AD or CEPA scan in one forward pass, many shadow models trained
at once) allocate and free activations of several MiB on every iteration, and on CPU they lose up to a quarter of
their time to it (measured: AD scan 1.31x, CEPA scan 1.13x, a vmap training step 1.2x faster with the settings
below; docs/benchmarks.md, "CPU allocator: freed memory kept for reuse"). Small batches (the one-pair loop, a single
model) stay below the thresholds and are not affected.

:func:`retain_freed_memory` raises both thresholds with glibc's ``mallopt``: blocks up to 32 MiB come from the heap,
and up to 1 GiB of free heap is kept for the next pass. It changes the whole process (every library in it), keeps
memory the process has freed (the resident size stays near its peak), and does nothing on other C libraries (musl,
macOS, Windows). The ``art-backdoor-ext`` command calls it at start unless ``ART_BACKDOOR_EXT_DEFAULT_MALLOC=1``;
a Python program calls it itself, once, before the heavy work. Setting ``MALLOC_MMAP_THRESHOLD_=33554432`` and
``MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment before Python starts has the same effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["retain_freed_memory", "MAX_MMAP_THRESHOLD", "OPT_OUT_ENV"]

logger = logging.getLogger(__name__)

#: The largest ``M_MMAP_THRESHOLD`` glibc accepts on a 64-bit system (``DEFAULT_MMAP_THRESHOLD_MAX``).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: Environment variable: ``1`` keeps the C library's defaults in the ``art-backdoor-ext`` command.
OPT_OUT_ENV = "ART_BACKDOOR_EXT_DEFAULT_MALLOC"

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    return libc


def _check_bytes(value: object, name: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= upper:
        raise InvalidParameterError(f"{name} must be an integer number of bytes in 1..{upper}, got {value!r}")
    return value


def retain_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 1024**3) -> bool:
    """
    Raise glibc's mmap and trim thresholds so that freed CPU memory is reused instead of returned to the kernel
    (module docstring). Process-wide; call it once, before the heavy work.

    :param mmap_threshold: Blocks of at least this many bytes are mapped from the kernel (and unmapped when freed);
        at most :data:`MAX_MMAP_THRESHOLD` (32 MiB), glibc's limit.
    :param trim_threshold: Free memory at the top of the heap beyond this many bytes is handed back to the kernel;
        at most 2 GiB - 1.
    :return: True when glibc accepted both settings; False (nothing changed) on another C library or platform.
    :raises InvalidParameterError: a threshold that is not a positive integer within its limit.
    """
    mmap_bytes = _check_bytes(mmap_threshold, "mmap_threshold", MAX_MMAP_THRESHOLD)
    trim_bytes = _check_bytes(trim_threshold, "trim_threshold", _INT_MAX)
    libc = _glibc()
    if libc is None:
        logger.info("retain_freed_memory: not glibc (%s); the C library's allocator settings are unchanged",
                    sys.platform)
        return False
    accepted = (libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_bytes)) == 1
                and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_bytes)) == 1)
    logger.info("retain_freed_memory: mmap threshold %d bytes, trim threshold %d bytes: %s", mmap_bytes, trim_bytes,
                "set" if accepted else "refused by glibc")
    return bool(accepted)
