"""Calibration: the data a model is run on, and what its layers see on it."""
