"""Backdoor poisoning attacks and trigger functions (PyTorch side of ART)."""
