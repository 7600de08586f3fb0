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
    finetune: {steps: 0, lr: 1e-4}
    seed: 0
    device: auto
    gates: {max_param_ratio: 0.5, max_rel_error: 0.9, min_cosine: 0.9}

Which keys exist, and what each sets, comes from ``sinecompress.config.SETTINGS`` (each setting's
recipe key): a recipe holds exactly the settings the CLI and the Python API take, with the same
checks and defaults. Layer matching is ``sinecompress.matching``'s rule (regex ``fullmatch`` on module
names), the same as ``--target`` / ``--exclude``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import SETTINGS, FactorizeConfig, Rule, make_config, shown
from ..errors import SettingError, UsageError
from ..matching import compile_patterns
from .gates import GATES
from .shipped import shipped_names, shipped_text

RECIPE_VERSION = 1
RULE_KEYS = ("match", "method", "rank", "param_ratio", "omega")
# Older recipe keys that name the same settings (they moved to the top level: they drive every stage).
ALIASES = {"finetune.seed": "seed", "finetune.device": "device"}
MAX_DEPTH = 50  # nesting deeper than this is not a recipe (and would exhaust the YAML composer's stack)

SCALAR, LIST = "scalar", "list"


def _schema() -> dict:
    """Mapping of recipe keys: a dict is a section, SCALAR/LIST a value, [RULE_KEYS] the rules."""
    spec: dict = {"version": SCALAR, "model": SCALAR, "output": SCALAR, "gates": dict.fromkeys(GATES, SCALAR)}
    keys = [s.recipe for s in SETTINGS if s.recipe] + list(ALIASES)
    for key in keys:
        *sections, leaf = key.split(".")
        node = spec
        for sec in sections:
            node = node.setdefault(sec, {})
        node[leaf] = SCALAR
    spec["exclude"] = LIST
    spec["targets"] = [dict.fromkeys(RULE_KEYS, SCALAR)]
    return spec


SCHEMA = _schema()
SETTING_OF = {s.recipe: s.key for s in SETTINGS if s.recipe and s.recipe not in ("targets", "exclude")}
SETTING_OF.update(ALIASES)
SETTING_OF["exclude"] = "exclude"


@dataclass
class Recipe:
    path: str
    text: str
    version: int = RECIPE_VERSION
    model: str | None = None
    output: str | None = None
    settings: dict = field(default_factory=dict)  # flat settings the recipe gives (SETTINGS keys)
    config: FactorizeConfig | None = None
    gates: dict = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # "targets[1].match" -> 1-based line

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.config.rules if self.config else ()

    @property
    def exclude(self) -> tuple[str, ...]:
        return self.config.exclude if self.config else ()

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
    """Read and validate a recipe file, or a shipped recipe by name (``minilm``) when no such file exists;
    raise UsageError ``FILE:LINE: ...`` on any problem."""
    path = Path(path)
    if not path.exists() and path.name == str(path) and path.suffix == "" and path.name in shipped_names():
        return parse_recipe(shipped_text(path.name), f"{path.name} (shipped)")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path}: not a regular file; a recipe is a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read recipe ({e.strerror if isinstance(e, OSError) else e})") from None
    return parse_recipe(text, str(path))


def parse_recipe(text: str, name: str = "<recipe>") -> Recipe:
    recipe = Recipe(name, text)
    data = _read_yaml(text, name, recipe)
    if data.get("version") != RECIPE_VERSION:
        raise UsageError(f"{recipe.where('version')}: recipe version {data.get('version')!r} is not supported; "
                         f"this sinecompress reads version {RECIPE_VERSION}")
    recipe.version = data["version"]
    for key in ("model", "output"):
        v = data.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise UsageError(f"{recipe.where(key)}: {key} must be a non-empty string, got {v!r}")
        setattr(recipe, key, v)
    recipe.gates = _gates(data.get("gates", {}), recipe)
    flat = {}
    for key, setting in SETTING_OF.items():
        section, _, leaf = key.rpartition(".")
        value = (data.get(section, {}) if section else data).get(leaf)
        if value is not None:
            flat[setting] = value
    for i, x in enumerate(data.get("exclude", [])):
        _check_regex(recipe, f"exclude[{i}]", x)
    rules = []
    for i, t in enumerate(data.get("targets", [])):
        if "match" not in t:
            raise UsageError(f"{recipe.where(f'targets[{i}]')}: targets[{i}] is missing the required key 'match'")
        _check_regex(recipe, f"targets[{i}].match", t["match"])
        try:
            rules.append(Rule(**t))
        except UsageError as e:
            raise UsageError(f"{recipe.where(f'targets[{i}]')}: targets[{i}]: {e}") from None
    if rules:
        flat["rules"] = tuple(rules)
    recipe.settings = flat
    recipe.config = config_of(recipe, flat)
    return recipe


def _check_regex(recipe: Recipe, key: str, value) -> None:
    """A pattern that does not compile fails here, with its line, not later as an internal error."""
    if not isinstance(value, str):
        return  # the config's own checks name a value that is not a string
    try:
        compile_patterns([value], key)
    except UsageError as e:
        raise UsageError(f"{recipe.where(key)}: {e}") from None


def config_of(recipe: Recipe, flat: dict) -> FactorizeConfig:
    """The recipe's settings as a config; a bad value names its recipe line."""
    try:
        return make_config(**flat)
    except SettingError as e:
        # the recipe key that gave this setting; a cross-setting error (rank and param_ratio) sits in defaults
        key = next((k for k, v in SETTING_OF.items() if v == e.key and k in recipe.lines), None)
        if key is None:  # nothing in the recipe gave it: the size is missing, or rank and param_ratio clash
            raise UsageError(f"{recipe.where('defaults')}: defaults need exactly one of rank or param_ratio "
                             "(or every rule its own)") from None
        raise UsageError(f"{recipe.where(key)}: {key} {e.problem}") from None


def _gates(gates: dict, recipe: Recipe) -> dict:
    out = {}
    for gate, value in gates.items():
        try:
            out[gate] = GATES[gate](value)
        except ValueError as e:
            raise UsageError(f"{recipe.where('gates.' + gate)}: gates.{gate} must be {e}, got {shown(value)}") from None
    return out


def _read_yaml(text: str, name: str, recipe: Recipe) -> dict:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects some bytes (control characters) itself
        node = loader.get_single_node()
        if node is None:
            raise UsageError(f"{name}:1: empty recipe; start from `sinecompress recipe init`")
        return _walk(loader, node, SCHEMA, "", recipe, 0)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise UsageError(f"{name}:{line}: invalid YAML: {_one_line(e.problem or e)}") from None
    except yaml.YAMLError as e:  # the reader's errors (a control character) carry a position, not a mark
        pos = getattr(e, "position", None)
        line = f":{text.count(chr(10), 0, pos) + 1}" if isinstance(pos, int) else ""
        raise UsageError(f"{name}{line}: invalid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise UsageError(f"{name}: invalid YAML: nested too deeply to be a recipe") from None
    finally:
        if loader is not None:
            loader.dispose()


def _one_line(e) -> str:
    return " ".join(str(e).split())


def _walk(loader, node, spec, key: str, recipe: Recipe, depth: int):
    """Check ``node`` against ``spec`` (dict = mapping, [x] = list of x, SCALAR/LIST = values)."""
    where = f"{recipe.path}:{node.start_mark.line + 1}"
    label = key or "the recipe"
    if depth > MAX_DEPTH:
        raise UsageError(f"{where}: {label} is nested too deeply to be a recipe")
    if isinstance(spec, dict):
        if not isinstance(node, yaml.MappingNode):
            raise UsageError(f"{where}: {label} must be a mapping of keys to values")
        out = {}
        for knode, vnode in node.value:
            k = _scalar(loader, knode, recipe)
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
            out[k] = _walk(loader, vnode, spec[k], sub, recipe, depth + 1)
        if not key and "version" not in out:
            raise UsageError(f"{where}: the recipe is missing the required key 'version' (add `version: 1` at the top)")
        return out
    if isinstance(spec, list) or spec == LIST:
        item = spec[0] if isinstance(spec, list) else SCALAR
        if isinstance(node, yaml.ScalarNode) and spec == LIST:  # `exclude: one-pattern` is fine
            return [_scalar(loader, node, recipe)]
        if not isinstance(node, yaml.SequenceNode):
            raise UsageError(f"{where}: {label} must be a list")
        out = []
        for i, child in enumerate(node.value):
            sub = f"{key}[{i}]"
            recipe.lines[sub] = child.start_mark.line + 1
            out.append(_walk(loader, child, item, sub, recipe, depth + 1))
        return out
    if not isinstance(node, yaml.ScalarNode):
        raise UsageError(f"{where}: {label} must be a single value, not a "
                         f"{'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    return _scalar(loader, node, recipe)


def _scalar(loader, node, recipe: Recipe):
    """A scalar's value; a tag that cannot build one (``!!int abc``) is an error with its line."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except Exception as e:  # constructors raise ValueError/TypeError/OverflowError for bad tagged values
        raise UsageError(f"{recipe.path}:{node.start_mark.line + 1}: invalid value {node.value!r} for tag "
                         f"{node.tag} ({type(e).__name__})") from None
