"""Fitting maths over plain tensors: truncated and whitened SVD, the sine fits, the choice of ω."""
