"""Backdoor defences: model scanners, sample detectors and poison filters for ART's PyTorchClassifier."""

from __future__ import annotations

from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector

__all__ = ["OrderStatisticDetector"]
