"""Model transformers (ART ``Transformer``): :class:`FinePruning` returns a repaired copy of a classifier."""

from __future__ import annotations

from art_backdoor_ext.defences.transformer.fine_pruning import FinePruning, FinePruningReport

__all__ = ["FinePruning", "FinePruningReport"]
