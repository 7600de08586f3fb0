"""Transformers models from a model directory's config.json, and checkpoint weights loaded into them.

One set of rules for every caller (calibration, ``load``, gates, evaluation): the class is the config's
first ``architectures`` entry (else ``AutoModel``); checkpoint names are the model's state-dict names,
or those names under the model's ``base_model_prefix`` (checkpoints saved from a task head); a tensor
the model does not have is an error, and so is a missing parameter; buffers that older checkpoints
store (BERT's position ids) are copied.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError


def is_causal_lm(config) -> bool:
    """Whether a transformers config describes a causal (next-token) LM.

    ``is_decoder``, else the named architectures (one ending in ``ForCausalLM``/``LMHeadModel``), else,
    for configs without architectures, a ``model_type`` that transformers gives a causal-LM class but no
    masked-LM class (llama, qwen2, gpt2, ...; not bert or roberta).
    """
    if getattr(config, "is_decoder", False):
        return True
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def is_causal_lm_dir(model_dir: Path | None) -> bool:
    """Whether ``model_dir`` holds a config.json describing a causal LM (False for no directory or no config)."""
    return (model_dir is not None and (Path(model_dir) / "config.json").is_file()
            and is_causal_lm(model_class(Path(model_dir))[0]))


def model_class(model_dir: Path):
    """(config, the transformers class config.json names in ``architectures``; without one, or with one
    whose config class is not the config's, the causal-LM auto class for a causal LM (its head gives
    logits), else AutoModel)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is not None and not isinstance(config, getattr(cls, "config_class", None) or object):
        cls = None  # `architectures` contradicts `model_type`: follow model_type, as the Auto classes do
    if cls is None:
        cls = transformers.AutoModelForCausalLM if is_causal_lm(config) else transformers.AutoModel
    return config, cls


def build_model(model_dir: Path) -> nn.Module:
    """A freshly initialised transformers model built from ``model_dir/config.json``."""

    try:
        config, cls = model_class(model_dir)
        # Not on the meta device: non-persistent buffers (position ids) must be really initialised.
        return cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    except Exception as e:  # an architecture this transformers version does not know, a bad config
        raise InputError(f"{model_dir}: cannot build the model from config.json ({_first_line(e)})") from None


def float32(transformers) -> dict:
    """``from_pretrained``'s keyword for float32 weights: ``dtype`` from transformers 4.56 on, ``torch_dtype`` before."""
    major, minor = (int("".join(c for c in x if c.isdigit()) or 0) for x in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str,
                 provided: set[str] = frozenset()) -> None:
    """Load ``tensors`` into ``model`` by name. ``provided``: module names whose weights the caller
    put in place already (compressed layers), so their parameters are not reported missing."""
    buffers = dict(model.named_buffers())
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected and [k for k in unexpected if k not in buffers]:
        prefix = getattr(model, "base_model_prefix", "")
        stripped = {k[len(prefix) + 1:] if prefix and k.startswith(prefix + ".") else k: v for k, v in tensors.items()}
        if stripped.keys() != tensors.keys():
            tensors = stripped
            missing, unexpected = model.load_state_dict(tensors, strict=False)
    for k in [k for k in unexpected if k in buffers]:  # old checkpoints store now non-persistent buffers
        if buffers[k].shape == tensors[k].shape:
            with torch.no_grad():
                buffers[k].copy_(tensors[k])
            unexpected.remove(k)
    if unexpected:
        raise InputError(f"{where}: weight {unexpected[0]!r} does not fit the model built from config.json")
    params = dict(model.named_parameters())  # tied parameters appear once; a tied head is not missing
    missing = [k for k in missing if k in params and k.rsplit(".", 1)[0] not in provided]
    if missing:
        raise InputError(f"{where}: the model expects {missing[0]!r}, which the checkpoint lacks")


def checkpoint_names(model: nn.Module, tensors) -> dict[str, str]:
    """Model parameter name -> the checkpoint tensor holding it: the same name, or the name under or without
    the model's ``base_model_prefix`` (checkpoints saved from a task head, or from the bare model)."""
    prefix = getattr(model, "base_model_prefix", "")
    out = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        cand = next((c for c in prefixed(name, prefix) if c in tensors), None)
        if cand is not None:
            out[name] = cand
    return out


def prefixed(name: str, prefix: str | None) -> tuple[str, ...]:
    """``name`` and what it may be called on the other side of a load: under the base model's prefix, or
    without it (checkpoints saved from a task head, or from the bare model)."""
    if not prefix:
        return (name,)
    bare = (name[len(prefix) + 1:],) if name.startswith(prefix + ".") else ()
    return (name, f"{prefix}.{name}", *bare)


DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def check_depth(src) -> None:
    """A config.json that claims more blocks than the checkpoint holds is refused before anything is built
    (a model of 10⁶ layers would take hours to build only to fail on missing weights)."""
    cfg = src.config() or {}
    depth = next((cfg[k] for k in DEPTH_KEYS if isinstance(cfg.get(k), int)), None)
    if depth is None:
        return
    stacks: dict[str, set[int]] = {}
    for name in src.tensors:
        for m in re.finditer(r"\.(\d+)\.", name):
            stacks.setdefault(name[:m.start()], set()).add(int(m.group(1)))
    found = max((len(s) for s in stacks.values()), default=0)
    if found and depth > found:
        raise InputError(f"{src.display}: config.json says {depth} layers, but the checkpoint holds weights for "
                         f"{found}; the config does not belong to these weights")


LINEAR, CONV1D = "linear", "conv1d"


def module_kind(module: nn.Module) -> str:
    """``linear`` (``nn.Linear``: weight out×in), ``conv1d`` (transformers' ``Conv1D`` of GPT-2 and its
    kin: the same map with its weight stored in×out), else the module's class name."""
    if isinstance(module, nn.Linear):
        return LINEAR
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return CONV1D
    return type(module).__name__


def module_kinds(src) -> dict[str, str] | None:
    """Checkpoint module name -> ``module_kind`` of the module it loads into, for every 2-D ``.weight`` of a
    module the model has; None when there is no model to ask (a bare weights file, an architecture
    transformers cannot build). A model directory's
    model is built on the meta device from config.json (nothing allocated); an in-memory source's is its own."""
    model = getattr(src, "module", None)
    side = None if model is not None else src.side_dir()
    if model is None and (side is None or not (side / "config.json").is_file()):
        return None
    if model is None:
        check_depth(src)  # a config claiming 10⁶ blocks is refused before it is built, even on meta
        try:
            with torch.device("meta"):
                model = build_model(side)
        except InputError:  # an architecture this transformers cannot build: weight-only runs still work
            return None
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    out = {}
    for name in src.tensors:
        if not name.endswith(".weight"):
            continue
        mod = name[:-len(".weight")]
        key = next((c for c in prefixed(mod, prefix) if c in modules), None)
        if key is not None:
            out[mod] = module_kind(modules[key])
    return out


def check_fits(src, compressed: Collection[str] = ()) -> None:
    """The checkpoint fits the model its config.json describes: no more blocks (``check_depth``), and every
    tensor the model has a parameter or buffer for has that shape. The model is built on the meta device,
    so a config that lacks its size keys (transformers then defaults to e.g. a 7B Llama) is refused before
    anything is allocated. ``compressed``: module names whose tensors are factors, not the model's shapes."""
    check_depth(src)
    with torch.device("meta"):
        model = build_model(src.side_dir())
    heads = getattr(model.config, "num_attention_heads", None)
    kv_heads = getattr(model.config, "num_key_value_heads", None)
    if type(heads) is int and type(kv_heads) is int and (kv_heads < 1 or heads % kv_heads):
        raise InputError(f"{src.display}: config.json has num_key_value_heads {kv_heads}, which does not divide "
                         f"num_attention_heads {heads}; grouped-query attention needs whole groups")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = getattr(model, "base_model_prefix", "")
    for name, info in src.tensors.items():
        if name.rsplit(".", 1)[0] in compressed:
            continue
        key = next((c for c in prefixed(name, prefix) if c in expected), None)
        if key is not None and tuple(info.shape) != expected[key]:
            raise InputError(f"{src.display}: weight {name!r} has shape {list(info.shape)}, but the model "
                             f"config.json describes needs {list(expected[key])}; the config does not belong "
                             "to these weights")


def dense_model(src) -> nn.Module:
    """The source's model in float32 with all its weights, in eval mode.

    A safetensors model directory goes through transformers' own ``from_pretrained`` (its rules for
    prefixes, tied weights and buffers, parameters created empty, then filled); other sources with side
    files (GGUF) build the model from their config and load their tensors by ``load_weights``' rules."""
    check_fits(src)
    if src.kind in ("hf_dir", "sharded"):
        import transformers

        try:
            _, cls = model_class(src.model_dir)
            return cls.from_pretrained(str(src.model_dir), local_files_only=True, **float32(transformers)).eval()
        except Exception as e:  # transformers raises many types for a checkpoint that does not fit its config
            raise InputError(f"{src.display}: transformers cannot load it ({_first_line(e)})") from None
    model = build_model(src.side_dir())
    load_weights(model, {k: _float(src.get(k)) for k in src.tensors}, src.display)
    return model.float().eval()


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t
