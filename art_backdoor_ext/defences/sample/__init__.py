"""Sample-level backdoor detectors (ART ``EvasionDetector``): :class:`MBDS` and its poison-filter adapter,
:class:`STRIP`, :class:`FeatureSqueezingDetector` and the white-box baseline :class:`ClassResidualDetector`."""

from __future__ import annotations

from art_backdoor_ext.defences.sample.class_residual import ClassResidualDetector
from art_backdoor_ext.defences.sample.feature_squeezing import FeatureSqueezingDetector
from art_backdoor_ext.defences.sample.mbds import MBDS, MetaClassifier
from art_backdoor_ext.defences.sample.mbds_filter import MBDSPoisonFilter
from art_backdoor_ext.defences.sample.strip import STRIP

__all__ = ["MBDS", "MBDSPoisonFilter", "MetaClassifier", "STRIP", "FeatureSqueezingDetector", "ClassResidualDetector"]
