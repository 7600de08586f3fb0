"""Register with transformers' quantizer registry (hf_quantizer.py) without making ``import sinecompress`` slow.

Importing ``transformers.quantizers.auto`` takes seconds (it pulls in transformers' whole loading
machinery), so ``import sinecompress`` does not import it. If transformers has already loaded it, we
register at once; otherwise a one-shot import hook registers right after transformers first imports
it, which every ``from_pretrained`` (also SentenceTransformer's) does before reading a config.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

from ..errors import SineCompressWarning

TARGET = "transformers.quantizers.auto"


def install() -> None:
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def _register() -> None:
    try:
        from .hf_quantizer import register

        register()
    except Exception as e:  # noqa: BLE001 - must never break transformers' own import
        warnings.warn(f"sinecompress could not register with transformers ({type(e).__name__}: {e}); "
                      "from_pretrained will refuse sinecompress directories, sinecompress.load() still reads them",
                      SineCompressWarning, stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders give for TARGET, then leaves sys.meta_path."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfter(spec.loader)
                return spec
        return None


class _RegisterAfter(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)
