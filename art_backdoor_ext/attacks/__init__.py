"""Backdoor poisoning attacks and trigger functions (PyTorch side of ART)."""

from art_backdoor_ext.attacks.jumbo import JumboContamination, JumboDistribution, JumboSetting, ShadowDataset
from art_backdoor_ext.attacks.sdrm import SDRM, SDRMTrainingLog

__all__ = ["JumboContamination", "JumboDistribution", "JumboSetting", "ShadowDataset", "SDRM", "SDRMTrainingLog"]
