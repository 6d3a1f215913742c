"""Scoring a draft: risk signals and the calibrated confidence."""
