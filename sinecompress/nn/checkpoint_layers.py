"""Compressed layers whose tensors carry the compressed checkpoint's names (io/format.py).

``CompressedSineLinear`` stores U, V, a, L_u, L_v as ``sine_u``, ``sine_v``, ``sine_amp``,
``sine_lin_u``, ``sine_lin_v``, and ``CompressedLowRankLinear`` stores ``lowrank_u``, ``lowrank_v``,
so a model's ``state_dict()`` is the compressed checkpoint and transformers' ``from_pretrained``
loads the factors by name, with no key renaming that could differ across transformers versions.
Both also hold ``weight``: an empty persistent buffer, saved as the zero-element ``<module>.weight``
placeholder that makes a loader unaware of the format stop on a shape mismatch instead of leaving
a randomly initialised dense weight. The base classes' attributes (``u``, ``v``, ``amp``, ...) still
work: they resolve to the stored names.
"""

from __future__ import annotations

import torch

from ..io.format import PLACEHOLDER, SUFFIXES
from .layers import LowRankLinear, SineLowRankLinear


class _CheckpointNames:
    """Registers tensors under their checkpoint names and reads the base class's names through them."""

    _STORED: dict[str, str] = {}

    def register_parameter(self, name, param):
        super().register_parameter(self._STORED.get(name, name), param)

    def register_buffer(self, name, tensor, persistent=True):
        super().register_buffer(self._STORED.get(name, name), tensor, persistent)

    def __getattr__(self, name):
        stored = type(self)._STORED.get(name)
        return super().__getattr__(name if stored is None else stored)

    def _add_placeholder(self):
        self.register_buffer(PLACEHOLDER, torch.empty(0, dtype=self.u.dtype, device=self.u.device))


class CompressedSineLinear(_CheckpointNames, SineLowRankLinear):
    _STORED = SUFFIXES["sine"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_placeholder()


class CompressedLowRankLinear(_CheckpointNames, LowRankLinear):
    _STORED = SUFFIXES["lowrank"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_placeholder()
