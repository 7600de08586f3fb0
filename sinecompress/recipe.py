"""YAML recipes: one versioned file that states a whole compression run, and its quality gates.

The file is parsed into YAML nodes (not plain dicts) so that every error can name the file and
line of the offending key: ``recipe.yaml:3: unknown key 'targts' (did you mean 'targets'?)``.
Errors are ``UsageError`` (exit 2). The schema reference is docs/recipes.md; in short::

    version: 1
    model: example:minilm            # source, as on the command line
    output: out/minilm-sine
    defaults: {method: sine, rank: 64, omega: 100, fit_steps: 300}   # or param_ratio instead of rank
    targets:                          # ordered; the first rule whose regex full-matches a layer wins
      - {match: '.*intermediate\\.dense', rank: 96}
    exclude: ['.*attention.*']
    calibration: {source: calib.txt, samples: 128, seq_len: 128}
    finetune: {steps: 0, lr: 1e-4, device: auto, seed: 0}
    gates: {max_param_ratio: 0.5, max_rel_error: 0.9, min_cosine: 0.9}

Layer matching is ``sinecompress.matching``'s rule (regex ``fullmatch`` on module names), the same
as ``--target`` / ``--exclude``.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError
from .plan import ALLOCATIONS, METHODS, Rule

RECIPE_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")


# --- value checkers: each returns the value or raises ValueError with what was expected ----------

def _int(v, lo=None):
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise ValueError("a positive integer" if lo == 1 else
                         "a non-negative integer" if lo == 0 else "an integer")
    return v


def _number(v):
    if isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError("a finite number")
    return float(v)


def _str(v):
    if not isinstance(v, str) or not v:
        raise ValueError("a non-empty string")
    return v


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _regex(v):
    _str(v)
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"a valid regular expression ({e})") from None
    return v


def _choice(options):
    def check(v):
        if v not in options:
            raise ValueError("one of " + ", ".join(options))
        return v
    return check


def _in_range(lo, hi, lo_open=True, hi_open=True):
    def check(v):
        x = _number(v)
        if (x <= lo if lo_open else x < lo) or (x >= hi if hi_open else x > hi):
            raise ValueError(f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return x
    return check


def _omega(v):
    if v == "auto":  # automatic ω (issue 3); accepted here, resolved by the plan when supported
        return v
    x = _number(v)
    if x <= 0:
        raise ValueError("a positive number or 'auto'")
    return x


SIZE = {"method": _choice(METHODS + ("wsvd",)), "rank": lambda v: _int(v, 1),
        "param_ratio": _in_range(0, 1), "omega": _omega}
SCHEMA: dict = {
    "version": _int,
    "model": _str,
    "output": _str,
    "defaults": {**SIZE, "fit_steps": lambda v: _int(v, 1), "allocate": _choice(ALLOCATIONS),
                 "sequential": _bool},
    "targets": [{"match": _regex, **SIZE}],
    "exclude": [_regex],
    "calibration": {"source": _str, "samples": lambda v: _int(v, 1), "seq_len": lambda v: _int(v, 1)},
    "finetune": {"steps": lambda v: _int(v, 0), "lr": _in_range(0, math.inf), "device": _choice(DEVICES),
                 "seed": lambda v: _int(v, 0)},
    "gates": {"max_param_ratio": _in_range(0, 1, hi_open=False), "min_cosine": _in_range(-1, 1, False, False),
              "max_rel_error": _in_range(0, math.inf, lo_open=False)},
}
REQUIRED = {"": ("version",), "targets[]": ("match",)}


@dataclass
class Recipe:
    path: str
    text: str
    version: int = RECIPE_VERSION
    model: str | None = None
    output: str | None = None
    defaults: dict = field(default_factory=dict)
    targets: list[Rule] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # "targets[1].match" -> 1-based line

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def line(self, key: str) -> int:
        """Line of a dotted key, or of its nearest recorded parent (1 if none)."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", key) if key[-1] == "]" or "." in key else ""
        return 1

    def where(self, key: str) -> str:
        return f"{self.path}:{self.line(key)}"


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; raise UsageError ``FILE:LINE: ...`` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read recipe ({e.strerror if isinstance(e, OSError) else e})") from None
    return parse_recipe(text, str(path))


def parse_recipe(text: str, name: str = "<recipe>") -> Recipe:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader already rejects some bytes (control characters)
        node = loader.get_single_node()
        if node is None:
            raise UsageError(f"{name}:1: empty recipe; start from `sinecompress recipe init`")
        recipe = Recipe(name, text)
        data = _walk(loader, node, SCHEMA, "", recipe)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise UsageError(f"{name}:{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{name}: invalid YAML: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data.get("version") != RECIPE_VERSION:
        raise UsageError(f"{recipe.where('version')}: recipe version {data.get('version')} is not supported; "
                         f"this sinecompress reads version {RECIPE_VERSION}")
    recipe.version = data["version"]
    recipe.model, recipe.output = data.get("model"), data.get("output")
    recipe.defaults = data.get("defaults", {})
    recipe.exclude = data.get("exclude", [])
    recipe.calibration = data.get("calibration", {})
    recipe.finetune = data.get("finetune", {})
    recipe.gates = data.get("gates", {})
    _check_size(recipe.defaults, "defaults", recipe)
    for i, t in enumerate(data.get("targets", [])):
        _check_size(t, f"targets[{i}]", recipe)
        recipe.targets.append(Rule(**t))
    return recipe


def _check_size(d: dict, key: str, recipe: Recipe) -> None:
    if "rank" in d and "param_ratio" in d:
        raise UsageError(f"{recipe.where(key + '.param_ratio')}: {key} has both rank and param_ratio; keep one")


def _walk(loader, node, spec, key: str, recipe: Recipe):
    """Check ``node`` against ``spec`` (dict = mapping, [x] = list of x, callable = scalar check)."""
    where = f"{recipe.path}:{node.start_mark.line + 1}"
    label = key or "the recipe"
    if isinstance(spec, dict):
        if not isinstance(node, yaml.MappingNode):
            raise UsageError(f"{where}: {label} must be a mapping of keys to values")
        out = {}
        for knode, vnode in node.value:
            k = loader.construct_object(knode)
            kwhere = f"{recipe.path}:{knode.start_mark.line + 1}"
            if not isinstance(k, str) or k not in spec:
                hint = difflib.get_close_matches(str(k), list(spec), n=1)
                inside = f" in {key}" if key else ""
                did = f" (did you mean '{hint[0]}'?)" if hint else f"; allowed: {', '.join(spec)}"
                raise UsageError(f"{kwhere}: unknown key '{k}'{inside}{did}")
            if k in out:
                raise UsageError(f"{kwhere}: duplicate key '{k}'" + (f" in {key}" if key else ""))
            sub = f"{key}.{k}" if key else k
            recipe.lines[sub] = knode.start_mark.line + 1
            out[k] = _walk(loader, vnode, spec[k], sub, recipe)
        for req in REQUIRED.get(re.sub(r"\[\d+\]", "[]", key), ()):
            if req not in out:
                raise UsageError(f"{where}: {label} is missing the required key '{req}'"
                                 + (" (add `version: 1` at the top)" if req == "version" else ""))
        return out
    if isinstance(spec, list):
        if isinstance(node, yaml.ScalarNode) and spec[0] is _regex:  # `exclude: one-pattern` is fine
            return [_walk(loader, node, spec[0], key, recipe)]
        if not isinstance(node, yaml.SequenceNode):
            raise UsageError(f"{where}: {label} must be a list")
        out = []
        for i, item in enumerate(node.value):
            sub = f"{key}[{i}]"
            recipe.lines[sub] = item.start_mark.line + 1
            out.append(_walk(loader, item, spec[0], sub, recipe))
        return out
    if not isinstance(node, yaml.ScalarNode):
        raise UsageError(f"{where}: {label} must be a single value, not a "
                         f"{'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    value = loader.construct_object(node)
    try:
        return spec(value)
    except ValueError as e:
        raise UsageError(f"{where}: {label} must be {e}, got {value!r}") from None


# --- from a recipe to factorize() arguments ------------------------------------------------------

# Recipe keys that only later factorize() versions understand (calibration, fine-tuning: issue 3),
# mapped to the keyword names they may take there; the first name factorize() accepts is used.
PASS_THROUGH = {
    "calibration.source": ("calib",),
    "calibration.samples": ("calib_samples",),
    "calibration.seq_len": ("seq_len",),
    "finetune.steps": ("finetune_steps", "ft_steps"),
    "finetune.lr": ("finetune_lr", "ft_lr", "lr"),
    "finetune.device": ("device",),
}


def factorize_kwargs(recipe: Recipe, accepted: set[str], overrides: dict | None = None) -> dict:
    """Keyword arguments for ``factorize()`` from a recipe, CLI ``overrides`` applied on top.

    ``accepted``: the parameter names the installed ``factorize()`` takes. A recipe key it cannot
    honour is an error (exit 2), never silently dropped: a CI gate must not pass on a run that
    ignored part of its recipe.
    """
    o = dict(overrides or {})
    d = recipe.defaults
    rules = list(recipe.targets)
    size_override = "rank" in o or "param_ratio" in o
    if size_override:  # a size flag sets every layer's size, the rules' included
        rules = [Rule(r.match, r.method, None, None, r.omega) for r in rules]
    if "omega" in o:
        rules = [Rule(r.match, r.method, r.rank, r.param_ratio, None) for r in rules]
    if "method" in o:
        rules = [Rule(r.match, None, r.rank, r.param_ratio, r.omega) for r in rules]
    if "targets" in o:  # --target replaces the recipe's rules: every match then uses the defaults
        rules = [Rule(p) for p in o["targets"]]
    kw = {
        "method": o.get("method", d.get("method", "sine")),
        "rank": o.get("rank") if size_override else d.get("rank"),
        "param_ratio": o.get("param_ratio") if size_override else d.get("param_ratio"),
        "omega": o.get("omega", d.get("omega", 100.0)),
        "exclude": list(o.get("exclude", recipe.exclude)),
        "steps": o.get("steps", d.get("fit_steps", 300)),
        "allocate": o.get("allocate", d.get("allocate", "uniform")),
        "sequential": o.get("sequential", d.get("sequential")),
        "seed": o.get("seed", recipe.finetune.get("seed", 0)),
        "rules": rules,
    }
    for key, names in PASS_THROUGH.items():
        section, _, name = key.partition(".")
        value = getattr(recipe, section).get(name)
        if value is None or (section == "finetune" and not recipe.finetune.get("steps")):
            continue  # lr/device mean nothing without fine-tuning steps
        target = next((n for n in names if n in accepted), None)
        if target is None:
            raise UsageError(f"{recipe.where(key)}: '{key}' is not supported by this sinecompress build "
                             "(its factorize has no such option); remove it from the recipe")
        kw[target] = value
    if "ft_steps" in o:  # factorize --steps: the end-to-end fine-tune's steps
        kw["ft_steps"] = o["ft_steps"]
    if "wsvd" in {kw["method"], *(r.method for r in rules)} and "wsvd" not in _methods():
        line = recipe.where("defaults.method")
        raise UsageError(f"{line}: method 'wsvd' is not supported by this sinecompress build; use sine or svd")
    return kw


def _methods() -> tuple[str, ...]:
    from . import plan

    return plan.METHODS


# --- the commented template written by `recipe init` ---------------------------------------------

TEMPLATE = """\
# sinecompress recipe (schema: docs/recipes.md). Run it with:
#   sinecompress recipe validate THIS.yaml
#   sinecompress recipe show THIS.yaml           # which layers each rule matches; compresses nothing
#   sinecompress factorize --recipe THIS.yaml    # command-line flags override the values below
# Exit codes: 0 ok, 1 a gate failed (output still written), 2 recipe/usage error, 3 unreadable input.
version: 1

# What to compress: a .safetensors file, a (sharded) Hugging Face model directory, or example:minilm.
model: example:minilm
# Where to write: a .safetensors file for a file model, a directory for a directory model.
output: out/minilm-sine

# Settings for every targeted layer that no rule below overrides.
defaults:
  method: sine          # sine (a ⊙ sin(ω·UVᵀ) + low-rank linear part) or svd (truncated SVD baseline)
  rank: 64              # total factor rank per layer; or param_ratio: 0.25 (fraction of the dense layer)
  omega: 100            # sine frequency ω
  fit_steps: 300        # optimisation steps of each layer's sine fit
  # allocate: sensitivity  # with param_ratio: spread the same budget by measured sensitivity
  # sequential: true       # fit each layer to the compressed earlier layers' outputs (default: only without fine-tune)

# Ordered rules: a regex matched in full against module names (tensor name minus '.weight').
# The FIRST rule that matches a layer sets its settings; unset fields come from `defaults`.
# Only layers some rule matches are compressed.
targets:
  - match: 'encoder\\.layer\\.\\d+\\.intermediate\\.dense'
    rank: 96
  - match: 'encoder\\.layer\\.\\d+\\.output\\.dense'

# Regexes (full match) of layers to leave dense even if a rule matches them.
exclude: []

# Random seed: the same recipe and seed give byte-identical output on the same machine.
finetune:
  seed: 0

# Quality gates, checked after the output is written; a failing gate exits with code 1.
gates:
  max_param_ratio: 0.5  # factor params / dense params, over the targeted layers
  max_rel_error: 0.95   # worst per-layer relative weight error ‖Ŵ−W‖/‖W‖
  min_cosine: 0.5       # mean cosine of mean-pooled last hidden states vs the original (HF models only)
"""
