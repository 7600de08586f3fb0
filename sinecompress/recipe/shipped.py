"""Recipes that ship inside the package (``sinecompress/recipe/shipped/*.yaml``), so that
``recipe init --from NAME`` and ``factorize --recipe NAME`` work after a plain ``pip install``."""

from __future__ import annotations

from importlib import resources

from ..errors import UsageError

FOLDER = "shipped"


def shipped_names() -> list[str]:
    folder = resources.files(__package__) / FOLDER
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def shipped_text(name: str) -> str:
    """The text of shipped recipe ``name``; UsageError listing the names otherwise."""
    if name not in shipped_names():
        raise UsageError(f"no shipped recipe {name!r}; shipped: {', '.join(shipped_names())}")
    return (resources.files(__package__) / FOLDER / f"{name}.yaml").read_text(encoding="utf-8")


def summary_line(name: str) -> str:
    """The first comment line of a shipped recipe: what it compresses."""
    first = shipped_text(name).splitlines()[0]
    return first.lstrip("# ").strip()
