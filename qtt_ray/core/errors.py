"""Errors of the Quick-Tune core: one-line messages that name the file/option and the fix."""

from __future__ import annotations


class PredictorError(ValueError):
    """A predictor artefact or predictor input that does not fit (space, meta-features, files)."""


class PolicyError(ValueError):
    """An ask/tell call that breaks the protocol (unknown trial, wrong epoch, bad pool)."""
