"""One factorize run, described by one frozen object, and the one table of its settings.

``FactorizeConfig`` holds what to compress and how (method, size, ω, targets, rules), with nested parts
for the layer fits, calibration, the fine-tune and the output. Every part validates itself when built,
so a bad value fails before anything is read or fitted.

``SETTINGS`` maps each setting's flat name (the Python keyword, and the CLI flag with dashes) to its
field, its recipe key and its single default. The CLI builds a config from the flags actually given,
a recipe from the keys it holds, ``factorize(src, out, **flat)`` from keywords; all through
``make_config``, so the three agree on names, defaults and checks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SettingError, UsageError

METHODS = ("sine", "svd", "wsvd")  # wsvd: whitened SVD (SVD-LLM), needs calibration data
ALLOCATIONS = ("uniform", "sensitivity")  # how a --param-ratio budget is spread (pipeline/allocate.py)
DEVICES = ("auto", "cpu", "cuda")
# How calibrated runs tune: "block" fits and tunes block by block (the embeddings, one block and the
# activations in memory), "global" fits every layer and tunes them together against the whole model's
# outputs (everything in memory), "none" fits block by block without tuning; "auto" is block for causal
# LMs (memory grows with depth) and global otherwise (on MiniLM it measured better and faster).
# docs/tuning.md and BENCHMARKS.md (readme_minilm) measure them.
FINETUNE_MODES = ("auto", "block", "global", "none")
TUNE_TARGETS = ("auto", "block", "model")
# Fine-tune steps when none are given: what fits the time budget on each device (docs/tuning.md).
FINETUNE_STEPS = {"cpu": 200, "cuda": 1000}  # --finetune global: steps over the whole model
# --finetune block: steps per block. A deep LM repeats them per block: at 200 per block on the CPU, SmolLM2's
# 30 blocks had not finished after 25 minutes (benchmarks/smollm_ppl.py).
# More, smaller steps tune better: on SmolLM2 at 20 % removed, 128 steps of 4 rows reached perplexity 40.57
# against 41.34 for 64 of 8, in 26.5 instead of 24.4 minutes (96 of 8: 41.05, in about as much time; docs/tuning.md).
BLOCK_STEPS = {"cpu": 128, "cuda": 200}
TUNE_ROWS = 4  # calibration rows per block-tuning step
# Calibration samples when none are given. A whole-model tune of an encoder reads one text per row, and all
# the built-in text (1,843 texts) tuned all-MiniLM-L6-v2 better than 256 in the same steps (the README
# command's mean cosine 0.8095 against 0.7956 in 7 % more time, docs/tuning.md); its teacher's states are
# held up to distill.HELD_STATES_MIB and recomputed past it. Packed LM rows, tensor files, block-by-block
# runs (each block reruns every row) and runs without a tune (the sequential fit reruns the models on every
# row once per layer) keep 256.
CALIB_SAMPLES, WHOLE_MODEL_TEXTS = 256, 2048
# Relative tuning step: 0.01 measured best on MiniLM (global); a whole-model tune of SmolLM2 needed 0.001
# (BENCHMARKS.md smollm_ppl_global, smollm_ppl_global_lr). Block tuning's steps of 8 rows: 0.005 ended SmolLM2's
# blocks 0, 15 and 29 at 0.00805, 0.00271 and 0.00466 against 0.00804, 0.00325 and 0.00514 at 0.01 (block_time_lr*),
# but whitened SVD tuned better at 0.01 (perplexity 48.13 against 49.62 at 20 % removed, 81.10 against 85.27
# at 40 %). So a run's rate follows its layers: BLOCK_LR with any sine layer, BLOCK_LINEAR_LR when all are
# linear. A sine run's layers that fall back to whitened SVD keep BLOCK_LR: at 0.01 they left its blocks
# higher (block_time_lr_by_form).
FINETUNE_LR, GLOBAL_LM_LR, BLOCK_LR, BLOCK_LINEAR_LR = 1e-2, 1e-3, 5e-3, 1e-2
MAX_SEED = 2**63 - 1
# ω outside this range is a typo: the paper's values span 20-1400, and the fitted phase is a gauge (docs/fitting-measurements.md).
OMEGA_RANGE = (1e-6, 1e6)  # torch.manual_seed takes a 64-bit integer


@dataclass(frozen=True)
class Setting:
    key: str  # flat name: the Python keyword; the CLI flag is --key-with-dashes unless `flag` says otherwise
    field: str  # dotted path in FactorizeConfig
    default: Any
    recipe: str | None  # dotted recipe key, or None when a recipe cannot set it
    help: str
    flag: str | None = None
    aliases: tuple[str, ...] = ()  # older Python keyword names, still accepted

    @property
    def cli(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("method", "method", "sine", "defaults.method",
            "sine (hybrid sine low-rank), svd (truncated SVD baseline) or wsvd (whitened SVD; needs calibration)."),
    Setting("rank", "rank", None, "defaults.rank", "Total factor rank per layer (sine part + linear part)."),
    Setting("param_ratio", "param_ratio", None, "defaults.param_ratio",
            "Per-layer parameter budget as a fraction of the dense layer (amplitude included)."),
    Setting("omega", "omega", "auto", "defaults.omega",
            "Sine frequency ω, or 'auto': 100 when compressing, where ω is a gauge (docs/fitting.md)."),
    Setting("targets", "targets", (), None, "Regex matched in full against module names (tensor name minus "
            "'.weight'); repeatable. Default: every 2-D linear weight except embeddings, norms and tied heads.",
            flag="--target"),
    Setting("exclude", "exclude", (), "exclude", "Regex (full match) of modules to leave dense; repeatable."),
    Setting("rules", "rules", (), "targets", "Ordered per-layer rules; the first whose regex full-matches wins."),
    Setting("allocate", "allocate", "uniform", "defaults.allocate",
            "uniform: every layer gets --param-ratio; sensitivity: the same total budget spread by each layer's "
            "(whitened) spectrum and measured output sensitivity."),
    Setting("seed", "seed", 0, "seed", "Random seed; the same seed gives byte-identical output."),
    Setting("device", "device", "auto", "device", "auto (CUDA when available), cpu or cuda."),
    Setting("fit_steps", "fit.steps", 300, "defaults.fit_steps", "Optimisation steps of each layer's sine fit.",
            aliases=("steps",)),
    Setting("sequential", "fit.sequential", None, "defaults.sequential",
            "With --finetune global: fit each layer to the outputs of the already compressed earlier layers "
            "(block mode always does, block by block). Default: on without a fine-tune, off with one.",
            flag="--sequential/--no-sequential"),
    Setting("fallback", "fit.fallback", True, "defaults.fallback",
            "With calibration: a sine layer whose fit ends with a higher activation error than whitened SVD at the "
            "same rank (one amplitude vector fewer parameters) is stored as that whitened SVD; --no-fallback keeps "
            "every sine layer sine.", flag="--fallback/--no-fallback"),
    Setting("calibration", "calibration.enabled", None, "calibration.enabled",
            "Calibrate (fit what each layer sees, not its weights): default on for text model directories "
            "and whenever --calib is given.", flag="--no-calib"),
    Setting("calib", "calibration.source", None, "calibration.source",
            'Calibration data: text lines (.txt), JSONL {"text": ...}, or a .safetensors file of model input '
            "tensors. Default for text models: built-in text (Python stdlib docstrings)."),
    Setting("calib_samples", "calibration.samples", "auto", "calibration.samples",
            "Number of calibration samples: texts, or packed rows (see --calib-pack); auto: up to "
            f"{WHOLE_MODEL_TEXTS:,} texts for a whole-model tune (--finetune global) of unpacked text, "
            f"{CALIB_SAMPLES} otherwise (docs/tuning.md)."),
    Setting("seq_len", "calibration.seq_len", 128, "calibration.seq_len",
            "Tokens per calibration sample: a text's maximum, or each packed row's length."),
    Setting("calib_pack", "calibration.pack", None, "calibration.pack",
            "Join the calibration texts (with a blank line) and cut them into --calib-samples rows of --seq-len "
            "tokens, as a causal LM reads text, instead of one text per row. Default: on for causal LMs, off "
            "otherwise (docs/fitting.md).", flag="--calib-pack/--no-calib-pack"),
    Setting("finetune_steps", "finetune.steps", "auto", "finetune.steps",
            "Calibration fine-tune steps (distillation against the original); auto: for the whole model "
            f"(global) {FINETUNE_STEPS['cpu']} on CPU, {FINETUNE_STEPS['cuda']} on CUDA; for each block (block) "
            f"{BLOCK_STEPS['cpu']} on CPU, {BLOCK_STEPS['cuda']} on CUDA; 0: none.",
            flag="--steps", aliases=("ft_steps",)),
    Setting("finetune", "finetune.mode", "auto", "finetune.mode",
            "block: compress block by block, tuning each block towards --tune-target "
            "(bounded memory); global: tune all layers together against the whole model's outputs "
            "(everything in memory); none: block by block, no tuning; auto: block for causal LMs, global "
            "otherwise.", flag="--finetune"),
    Setting("tune_target", "finetune.target", "auto", "finetune.target",
            "What --finetune block tunes each block towards: model (the original model's output of each block, so each block also "
            "corrects the earlier blocks' error), block (the original block's output on the compressed inputs), "
            "auto: block when any layer is sine, model otherwise (measured on SmolLM2, docs/tuning.md).",
            flag="--tune-target"),
    Setting("tune_rows", "finetune.rows", TUNE_ROWS, "finetune.rows",
            "Calibration rows per block-tuning step (a piece of one batch): 128 steps of 4 rows tuned SmolLM2 "
            "better than 64 of 8 for 9 % more run time (docs/tuning.md).", flag="--tune-rows"),
    Setting("lr", "finetune.lr", "auto", "finetune.lr",
            f"Fine-tune learning rate, relative to each factor's RMS; auto: {BLOCK_LR:g} for block tuning with sine layers "
            f"({BLOCK_LINEAR_LR:g} when all are wsvd or svd), "
            f"{GLOBAL_LM_LR:g} for a whole-model tune of a causal LM, {FINETUNE_LR:g} for one of another model."),
    Setting("overwrite", "output.overwrite", False, None, "Replace an existing output."),
    Setting("resume", "output.resume", False, None, "Continue an interrupted run from the layers it already "
            "fitted (kept in .<out>.sc.work next to the output); the source and settings must match."),
    Setting("max_shard_size", "output.max_shard_size", None, "max_shard_size",
            "Split the output weights into shards of at most this size (e.g. 2GB, 500MB) with a "
            "model.safetensors.index.json; the output is then a directory."),
    Setting("workers", "workers", 1, "workers", "Fit layers in N local processes (torch.distributed, gloo); "
            "for several machines use torchrun instead (docs/scale.md)."),
    Setting("allow_pickle", "allow_pickle", False, None, "Accept pickle checkpoints (.bin/.pt), loaded with "
            "torch.load(weights_only=True), which refuses anything but tensors."),
)
BY_KEY = {s.key: s for s in SETTINGS}
BY_FIELD = {s.field: s for s in SETTINGS}
ALIASES = {a: s.key for s in SETTINGS for a in s.aliases}


def _fail(field_path: str, problem: str):
    s = BY_FIELD[field_path]
    raise SettingError(s.key, s.cli.split("/")[0], problem)


# --- checks: each returns the normalised value or raises SettingError naming the setting -------------

def _positive_int(path: str, v, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        what = "a positive integer" if lo == 1 else "a non-negative integer" if lo == 0 else f"an integer ≥ {lo}"
        _fail(path, f"must be {what}{f' up to {hi}' if hi is not None else ''}, got {v!r}")
    return v


def as_float(v) -> float | None:
    """A finite float from a number or a numeric string (YAML 1.1 reads ``1e-4`` as a string), else None;
    None too for an integer too large for a float (a recipe's 400-digit number)."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def shown(v) -> str:
    """``repr(v)`` for an error message, shortened (a 400-digit number would drown the line)."""
    try:
        text = repr(v)
    except ValueError:  # an int past Python's digit limit for str()
        return "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(path: str, v, lo: float, hi: float | None = None) -> float:
    f = as_float(v)
    if f is None or f <= lo or (hi is not None and f >= hi):
        where = f"between {lo:g} and {hi:g} (exclusive)" if hi is not None else f"a finite number above {lo:g}"
        _fail(path, f"must be {where}, got {shown(v)}")
    return f


def _choice(path: str, v, options) -> str:
    if v not in options:
        _fail(path, f"must be one of {', '.join(options)}, got {v!r}")
    return v


def _bool(path: str, v, optional: bool = False):
    if (v is None and optional) or isinstance(v, bool):
        return v
    _fail(path, f"must be true or false, got {v!r}")


def check_omega(om, label: str = "--omega", key: str = "omega"):
    """ω as given: 'auto' or a positive finite number (a numeric string is parsed)."""
    if om == "auto":
        return om
    f = as_float(om)
    if f is None or not OMEGA_RANGE[0] <= f <= OMEGA_RANGE[1]:
        raise SettingError(key, label, f"must be 'auto' or a number from {OMEGA_RANGE[0]:g} to {OMEGA_RANGE[1]:g}, "
                                       f"got {shown(om)}")
    return f


def _patterns(path: str, v) -> tuple[str, ...]:
    if isinstance(v, str):
        v = (v,)
    v = tuple(v)
    for p in v:
        if not isinstance(p, str) or not p:
            _fail(path, f"must be non-empty regular expressions, got {p!r}")
    return v


@dataclass(frozen=True)
class Rule:
    """Per-layer settings for the modules ``match`` full-matches; a None field falls back to the default.

    A rule's ``rank`` or ``param_ratio`` replaces the default size (whichever of the two it has).
    """

    match: str
    method: str | None = None
    rank: int | None = None
    param_ratio: float | None = None
    omega: float | str | None = None

    def __post_init__(self):
        where = f"rule {self.match!r}:"
        if not isinstance(self.match, str) or not self.match:
            raise UsageError(f"a rule's match must be a non-empty regular expression, got {self.match!r}")
        if self.method is not None and self.method not in METHODS:
            raise UsageError(f"{where} method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise UsageError(f"{where} rank must be a positive integer, got {self.rank!r}")
        if self.param_ratio is not None:
            r = self.param_ratio
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
                raise UsageError(f"{where} param_ratio must be between 0 and 1 (exclusive), got {r!r}")
        if self.rank is not None and self.param_ratio is not None:
            raise UsageError(f"{where} has both rank and param_ratio; keep one")
        if self.omega is not None:
            object.__setattr__(self, "omega", check_omega(self.omega, f"{where} omega", "rules"))


@dataclass(frozen=True)
class FitConfig:
    steps: int = 300  # Adam steps of each layer's sine fit
    sequential: bool | None = None  # None: on without a fine-tune (docs/fitting.md)
    fallback: bool = True  # a calibrated sine fit worse than whitened SVD keeps the whitened SVD

    def __post_init__(self):
        _positive_int("fit.steps", self.steps, hi=10**7)
        _bool("fit.sequential", self.sequential, optional=True)
        _bool("fit.fallback", self.fallback)


@dataclass(frozen=True)
class CalibrationConfig:
    enabled: bool | None = None  # None: automatic (text model directories, or a source given)
    source: str | None = None  # a file; None: built-in text for text models
    samples: int | str = "auto"  # "auto": rows_for's choice
    seq_len: int = 128
    pack: bool | None = None  # None: on for causal LMs (docs/fitting.md)

    def __post_init__(self):
        _bool("calibration.enabled", self.enabled, optional=True)
        if self.source is not None:
            if not isinstance(self.source, (str, type(None))) and hasattr(self.source, "__fspath__"):
                object.__setattr__(self, "source", str(self.source))
            if not isinstance(self.source, str) or not self.source:
                _fail("calibration.source", f"must be a file path, got {self.source!r}")
        if self.samples != "auto":
            _positive_int("calibration.samples", self.samples, hi=10**7)
        _positive_int("calibration.seq_len", self.seq_len, hi=10**6)
        _bool("calibration.pack", self.pack, optional=True)

    def rows_for(self, whole_model: bool, per_text: bool) -> int:
        """The samples this run reads: ``samples``, or under "auto" WHOLE_MODEL_TEXTS for a ``whole_model``
        tune of text read one text per row (``per_text``), CALIB_SAMPLES otherwise."""
        if self.samples != "auto":
            return self.samples
        return WHOLE_MODEL_TEXTS if whole_model and per_text else CALIB_SAMPLES


@dataclass(frozen=True)
class FinetuneConfig:
    mode: str = "auto"
    steps: int | str = "auto"  # "auto": FINETUNE_STEPS of the device
    lr: float | str = "auto"  # "auto": lr_for's choice
    target: str = "auto"  # block tuning's target: TUNE_TARGETS
    rows: int = TUNE_ROWS  # rows per block-tuning step

    def __post_init__(self):
        _choice("finetune.mode", self.mode, FINETUNE_MODES)
        _choice("finetune.target", self.target, TUNE_TARGETS)
        _positive_int("finetune.rows", self.rows, hi=10**7)
        if self.steps != "auto":
            _positive_int("finetune.steps", self.steps, lo=0, hi=10**7)
        if self.lr != "auto":
            object.__setattr__(self, "lr", _finite("finetune.lr", self.lr, 0.0))

    def lr_for(self, mode: str, causal_lm: bool, sine: bool = True) -> float:
        """The learning rate this run tunes with: ``lr``, or under "auto" for block tuning BLOCK_LR when the run
        has ``sine`` layers and BLOCK_LINEAR_LR when all are linear, FINETUNE_LR for a whole-model tune, except
        of a causal LM: on SmolLM2 that tune at 0.01 ended worse and was undone, at 0.001 it was kept."""
        if self.lr != "auto":
            return self.lr
        if mode == "block":
            return BLOCK_LR if sine else BLOCK_LINEAR_LR
        return GLOBAL_LM_LR if causal_lm else FINETUNE_LR

    def steps_on(self, device: str, mode: str = "global") -> int:
        """The steps this run takes: ``steps``, or under "auto" the default of the device and the mode."""
        if self.steps != "auto":
            return self.steps
        return (BLOCK_STEPS if mode == "block" else FINETUNE_STEPS)["cuda" if device.startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class OutputConfig:
    overwrite: bool = False
    resume: bool = False
    max_shard_size: str | int | None = None

    def __post_init__(self):
        _bool("output.overwrite", self.overwrite)
        _bool("output.resume", self.resume)
        if self.max_shard_size is not None:
            parse_size(self.max_shard_size)

    @property
    def shard_bytes(self) -> int | None:
        return None if self.max_shard_size is None else parse_size(self.max_shard_size)


@dataclass(frozen=True)
class FactorizeConfig:
    """Everything one ``factorize`` run needs besides its source and output paths."""

    method: str = "sine"
    rank: int | None = None
    param_ratio: float | None = None
    omega: float | str = "auto"
    targets: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    allocate: str = "uniform"
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    allow_pickle: bool = False
    fit: FitConfig = field(default_factory=FitConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        set_ = object.__setattr__
        _choice("method", self.method, METHODS)
        if self.rank is not None:
            _positive_int("rank", self.rank, hi=10**7)
        if self.param_ratio is not None:
            set_(self, "param_ratio", _finite("param_ratio", self.param_ratio, 0.0, 1.0))
        set_(self, "omega", check_omega(self.omega))
        set_(self, "targets", _patterns("targets", self.targets))
        set_(self, "exclude", _patterns("exclude", self.exclude))
        set_(self, "rules", tuple(r if isinstance(r, Rule) else Rule(**r) for r in self.rules))
        _choice("allocate", self.allocate, ALLOCATIONS)
        _positive_int("seed", self.seed, lo=0, hi=MAX_SEED)
        _choice("device", self.device, DEVICES)
        _positive_int("workers", self.workers, hi=256)
        _bool("allow_pickle", self.allow_pickle)
        if self.rank is not None and self.param_ratio is not None:
            raise SettingError("rank", "--rank", "and --param-ratio both given; give exactly one of them")
        if self.rank is None and self.param_ratio is None and not self.rules:
            raise SettingError("rank", "--rank", "is missing: give exactly one of --rank K or --param-ratio R")
        if self.allocate == "sensitivity" and self.param_ratio is None:
            raise SettingError("allocate", "--allocate", "sensitivity spreads a --param-ratio budget; give "
                               "--param-ratio R instead of --rank K")

    def to_flat(self) -> dict:
        """The config as flat settings (``SETTINGS`` keys), e.g. for provenance or ``make_config``."""
        return {s.key: _get(self, s.field) for s in SETTINGS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def canonical_key(key: str) -> str:
    key = ALIASES.get(key, key)
    if key not in BY_KEY:
        close = [k for k in BY_KEY if k.startswith(key[:4])]
        raise UsageError(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; settings are: {', '.join(BY_KEY)}")
    return key


def make_config(config: FactorizeConfig | None = None, /, **flat) -> FactorizeConfig:
    """``config`` (or the defaults) with the flat settings ``flat`` set on top; older keyword names work.

    A None value means "not given" and keeps what ``config`` has.
    """
    values = config.to_flat() if config is not None else {s.key: s.default for s in SETTINGS}
    values.update({canonical_key(k): v for k, v in flat.items() if v is not None})
    return _build(values)


def override(config: FactorizeConfig, /, **flat) -> FactorizeConfig:
    """Settings given on top of a recipe's: a size, ω or method given here applies to every layer, the
    recipe's rules included; ``targets`` replaces the rules (every match then uses the defaults)."""
    flat = {canonical_key(k): v for k, v in flat.items() if v is not None}
    values = config.to_flat()
    rules = config.rules
    if "rank" in flat or "param_ratio" in flat:
        rules = tuple(dataclasses.replace(r, rank=None, param_ratio=None) for r in rules)
        values["rank"] = values["param_ratio"] = None
    if "omega" in flat:
        rules = tuple(dataclasses.replace(r, omega=None) for r in rules)
    if "method" in flat:
        rules = tuple(dataclasses.replace(r, method=None) for r in rules)
    if "targets" in flat:
        rules = tuple(Rule(p) for p in _patterns("targets", flat.pop("targets")))
    values["rules"] = rules
    values.update(flat)
    return _build(values)


PARTS = {"fit": FitConfig, "calibration": CalibrationConfig, "finetune": FinetuneConfig, "output": OutputConfig}


def _build(values: dict) -> FactorizeConfig:
    nested: dict[str, dict] = {name: {} for name in PARTS}
    top = {}
    for key, v in values.items():
        part, _, name = BY_KEY[key].field.rpartition(".")
        (nested[part] if part else top)[name] = v
    # Parts first: their errors name the setting that is wrong, not a later cross-field check.
    built = {name: cls(**nested[name]) for name, cls in PARTS.items()}
    return FactorizeConfig(**top, **built)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is there, else ``cpu``; ``cuda`` without a GPU is a usage error.
    (One GPU of several is chosen with ``CUDA_VISIBLE_DEVICES``, as in most tools.)"""
    _choice("device", device, DEVICES)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", "--device", "cuda: no CUDA device is available; use --device cpu or auto")
    return device


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
MAX_SHARD_BYTES = 2**50  # a petabyte: anything larger is a typo


def parse_size(text: str | int) -> int:
    """``"2GB"`` → 2·10⁹ bytes, ``"500MiB"`` → 500·2²⁰; plain integers are bytes (as in transformers)."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).upper() not in UNITS:
            raise SettingError("max_shard_size", "--max-shard-size",
                               f"{text!r} is not a size; write e.g. 2GB, 500MB or 1GiB")
        n = float(m.group(1)) * UNITS[m.group(2).upper()]
        n = int(n) if math.isfinite(n) and n < MAX_SHARD_BYTES else MAX_SHARD_BYTES + 1
    if not 0 < n <= MAX_SHARD_BYTES:
        raise SettingError("max_shard_size", "--max-shard-size",
                           f"must be between 1 byte and 1 PiB, got {text!r}")
    return n
