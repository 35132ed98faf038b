"""art-backdoor-ext: backdoor attacks and defences for the Adversarial Robustness Toolbox (PyTorch).

Public entry points live in :mod:`art_backdoor_ext.attacks` and :mod:`art_backdoor_ext.defences`;
reference data, models and victim training in :mod:`~art_backdoor_ext.datasets`,
:mod:`~art_backdoor_ext.models` and :mod:`~art_backdoor_ext.training`; the comparison grid in
:mod:`~art_backdoor_ext.evaluation`. Importing the package does no I/O.
"""

from __future__ import annotations

import logging

from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError

__version__ = "0.1.0"
__all__ = ["__version__", "DataError", "InvalidParameterError", "NotFittedError"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
