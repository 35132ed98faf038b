"""retain_freed_memory: glibc keeps freed blocks for reuse (measured by the page faults of a second allocation, in
fresh processes so the test process's allocator is left as it is), bad thresholds are refused, other platforms are
left alone, and the command line calls it unless told not to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from art_backdoor_ext import allocator, cli
from art_backdoor_ext.exceptions import InvalidParameterError

_ON_GLIBC = allocator._glibc() is not None

# Allocate, touch and free 20 MiB three times; print the minor page faults of each round. With glibc's defaults the
# first block is mapped and unmapped, which raises the dynamic threshold, so the second comes from a heap that must
# grow: it faults its pages in again. With the raised thresholds the second reuses the first's pages.
_ROUNDS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from art_backdoor_ext.allocator import retain_freed_memory
    if sys.argv[1] == "tuned":
        assert retain_freed_memory()
    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.empty(20 * 262144, np.float32)
        block.fill(1.0)
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(" ".join(str(faults()) for _ in range(3)))
""")


def _fault_rounds(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True, timeout=120)
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(not _ON_GLIBC, reason="glibc only")
def test_freed_block_is_reused_instead_of_faulted_in_again():
    default, tuned = _fault_rounds("default"), _fault_rounds("tuned")
    assert default[1] > 100  # the defaults fault the second 20 MiB block in again (the test's premise)
    assert tuned[1] < 20 and tuned[2] < 20  # kept: the second and third blocks reuse the first's pages


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": 0}, {"mmap_threshold": allocator.MAX_MMAP_THRESHOLD + 1},
                                    {"mmap_threshold": 1.5e6}, {"trim_threshold": True},
                                    {"trim_threshold": 2**31}])
def test_bad_thresholds_are_refused(kwargs):
    with pytest.raises(InvalidParameterError, match="threshold must be an integer number of bytes"):
        allocator.retain_freed_memory(**kwargs)


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a, **k: pytest.fail("no C library may be loaded"))
    assert allocator.retain_freed_memory() is False


@pytest.mark.parametrize("opt_out, expected_calls", [(None, 1), ("1", 0)])
def test_command_line_calls_it_unless_opted_out(monkeypatch, opt_out, expected_calls):
    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    if opt_out is None:
        monkeypatch.delenv(allocator.OPT_OUT_ENV, raising=False)
    else:
        monkeypatch.setenv(allocator.OPT_OUT_ENV, opt_out)
    assert cli.main(["evaluate", "--list"]) == 0
    assert len(calls) == expected_calls
