"""torch.nn modules: the sine and low-rank layers, and the surgery that puts them into models."""

from .layers import LowRankLinear, SineLowRankLinear

__all__ = ["LowRankLinear", "SineLowRankLinear"]
