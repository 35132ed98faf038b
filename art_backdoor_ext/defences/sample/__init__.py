"""Sample-level backdoor detectors: :class:`MBDS` (an ART ``EvasionDetector``) and its poison-filter adapter."""

from __future__ import annotations

from art_backdoor_ext.defences.sample.mbds import MBDS, MetaClassifier
from art_backdoor_ext.defences.sample.mbds_filter import MBDSPoisonFilter

__all__ = ["MBDS", "MBDSPoisonFilter", "MetaClassifier"]
