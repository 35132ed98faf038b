"""Backdoor poisoning attacks and trigger functions (PyTorch side of ART)."""

from art_backdoor_ext.attacks.jumbo import JumboContamination, JumboDistribution, JumboSetting, ShadowDataset

__all__ = ["JumboContamination", "JumboDistribution", "JumboSetting", "ShadowDataset"]
