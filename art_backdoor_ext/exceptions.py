"""Exceptions raised by art-backdoor-ext.

Every error says what was expected and what was received. ``EstimatorError`` is ART's own and is
re-exported so that callers can catch a wrong estimator type the way they do with ART.
"""

from __future__ import annotations

from art.exceptions import EstimatorError

__all__ = ["ArtBackdoorExtError", "InvalidParameterError", "NotFittedError", "DataError", "EstimatorError"]


class ArtBackdoorExtError(Exception):
    """Base class of the errors raised by this package."""


class InvalidParameterError(ArtBackdoorExtError, ValueError):
    """A hyper-parameter is outside its allowed range or of the wrong type."""


class NotFittedError(ArtBackdoorExtError, RuntimeError):
    """A detector was used before ``fit``."""


class DataError(ArtBackdoorExtError, ValueError):
    """Input data has the wrong layout, dtype, range or labels, or a data file is missing."""
