"""Put adapters into any ``nn.Module`` (transformers models included), merge them, count them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import nn

from ..errors import UsageError
from ..matching import compile_patterns, full_match
from .config import AdapterConfig
from .layers import LAYERS, AdapterLinear


def inject_adapters(model: nn.Module, config: AdapterConfig, targets: Iterable[str],
                    exclude: Iterable[str] = (), freeze_base: bool = True) -> list[str]:
    """Wrap every ``nn.Linear`` whose module name full-matches a target pattern; return their names.

    Each pattern must match at least one ``nn.Linear`` (the error names the pattern). With
    ``freeze_base`` every parameter outside the adapters stops requiring grad, as in peft.
    """
    tpats = compile_patterns(list(targets), "--target")
    xpats = compile_patterns(list(exclude), "--exclude")
    if not tpats:
        raise UsageError("no adapter targets given; pass regular expressions matched in full against module names")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _inside_adapter(model, n)]
    for p in tpats:
        if not any(p.fullmatch(n) for n in linears):
            raise UsageError(f"target {p.pattern!r} matches no nn.Linear module; patterns match whole module "
                             f"names, e.g. {linears[0] if linears else '(model has no nn.Linear)'!r}")
    chosen = [n for n in linears if full_match(tpats, n) and not full_match(xpats, n)]
    if freeze_base:
        # Adapters injected earlier keep training; everything else is frozen.
        earlier = {id(p) for _, m in iter_adapters(model) for n, p in m.named_parameters()
                   if not n.startswith("base_layer.")}
        for p in model.parameters():
            if id(p) not in earlier:
                p.requires_grad_(False)
    cls = LAYERS[config.kind]
    for name in chosen:
        r, alpha, omega = config.for_module(name)
        parent, attr = _parent(model, name)
        layer = cls(getattr(parent, attr), r, alpha, omega, dropout=config.dropout, lean=config.lean,
                    fuse=config.fuse)
        setattr(parent, attr, layer)
    return chosen


def _inside_adapter(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), AdapterLinear):
            return True
    return False


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, attr = name.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, AdapterLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, AdapterLinear):
            yield name, m


def merge_adapters(model: nn.Module) -> None:
    """Fold every adapter into its base weight (forward then skips the adapter)."""
    for _, m in iter_adapters(model):
        m.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, m in iter_adapters(model):
        m.unmerge()


def remove_adapters(model: nn.Module, merge: bool = True) -> list[str]:
    """Replace each adapter by its (optionally merged) base ``nn.Linear``; return the module names."""
    names = []
    for name, m in list(iter_adapters(model)):
        if merge:
            m.merge()
        else:
            m.unmerge()
        parent, attr = _parent(model, name)
        setattr(parent, attr, m.base_layer)
        names.append(name)
    return names


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that require grad (after inject_adapters: the adapters only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
