"""Smoke test: every example runs in its fast mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_fast(path, capsys):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(fast=True)
    assert result, f"{path.name} returned nothing"
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"


def test_examples_are_indexed():
    index = (EXAMPLES[0].parent / "README.md").read_text()
    for path in EXAMPLES:
        assert path.name in index
