"""Model cards: the ``README.md`` (YAML front matter + text) that Hugging Face shows for a model directory.

A compressed directory's card says what was done to which model, and how well it went, instead of a
byte copy of the original's card (which would describe a model that no longer exists there). Its
content comes from the plan and the fit alone (no timings), so the same run gives the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..config import SETTINGS, FactorizeConfig
from ..io.examples import HUB_IDS
from ..io.sources import Source
from ..version import __version__
from .blockwise import tuning_means
from .plan import Plan

CARD = "README.md"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
MAX_CARD_BYTES = 1_000_000  # a larger original card is not read for its front matter


def base_model(src: Source) -> str | None:
    """The Hugging Face id of the source model, when it can be known: a bundled example's, the original
    card's ``base_model``, or config.json's ``_name_or_path`` when it looks like an id."""
    name = src.display.split(":", 1)[1] if src.display.startswith("example:") else None
    if name in HUB_IDS:
        return HUB_IDS[name]
    front = original_front_matter(src)
    if isinstance(front.get("base_model"), str) and HUB_ID.fullmatch(front["base_model"]):
        return front["base_model"]
    try:
        cfg = src.config() or {}
    except Exception:  # a broken config.json is reported where it matters, not in the card
        cfg = {}
    guess = cfg.get("_name_or_path")
    return guess if isinstance(guess, str) and HUB_ID.fullmatch(guess) else None


def original_front_matter(src: Source) -> dict:
    side = src.side_dir()
    path = side / CARD if side is not None else None
    if path is None or not path.is_file() or path.stat().st_size > MAX_CARD_BYTES:
        return {}
    m = re.match(r"---\n(.*?)\n---", path.read_text(encoding="utf-8", errors="replace"), re.S)
    try:
        front = yaml.safe_load(m.group(1)) if m else {}
    except (yaml.YAMLError, RecursionError):
        return {}
    return front if isinstance(front, dict) else {}


def command_line(source: str, out: Path, config: FactorizeConfig) -> str:
    """The ``sinecompress factorize`` command that gives ``config`` (its non-default settings)."""
    parts = ["sinecompress factorize", source, "--out", out.name]
    for s in SETTINGS:
        value = config.to_flat()[s.key]
        if s.key in ("rules", "overwrite", "resume") or value == s.default or value in ((), None):
            continue
        flag = s.cli.split("/")[0]
        if isinstance(value, bool):
            parts.append(flag if value else "/".join(s.cli.split("/")[1:]) or flag)
        elif isinstance(value, tuple):
            parts += [f"{flag} '{v}'" for v in value]
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def _render(front: dict, body: str) -> str:
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def compressed_card(src: Source, plan: Plan, factors: dict, config: FactorizeConfig | None, out: Path,
                    provenance: dict | None, finetune: dict | None) -> str:
    before = sum(lp.dense_params for lp in plan.compressed)
    after = sum(lp.factored_params for lp in plan.compressed)
    omegas = sorted({f"{lp.omega:g}" for lp in plan.compressed if lp.omega})
    ranks = sorted({lp.rank for lp in plan.compressed})
    front = {k: v for k, v in {"base_model": base_model(src), "library_name": "sinecompress",
                               "license": original_front_matter(src).get("license"),
                               "tags": ["sinecompress", "sine-low-rank", "compressed"]}.items() if v}
    methods = sorted({lp.method for lp in plan.compressed})
    lines = [f"# {out.name}", "",
             f"`{src.display}` with {len(plan.compressed)} dense layer{'s' if len(plan.compressed) != 1 else ''} factorised into sine-activated low-rank form "
             f"(Ji et al., ICLR 2025) by sinecompress {__version__}: each weight is stored as "
             "`L_u L_vᵀ + a ⊙ sin(ω · U Vᵀ)` (or `U Vᵀ` for the linear methods).", "",
             "| | |", "|---|---|",
             f"| method | {', '.join(methods)} |",
             f"| total rank per layer | {'–'.join(map(str, sorted({ranks[0], ranks[-1]}))) if ranks else '-'} |",
             f"| ω | {', '.join(omegas) or '-'} |",
             f"| parameters of the compressed layers | {before:,} → {after:,} ({after / before:.1%}) |"
             if before else "| parameters | unchanged |"]
    act = [f["act_error"] for f in factors.values() if f.get("act_error") is not None]
    rel = [f["rel_error"] for f in factors.values() if f.get("rel_error") is not None]
    if rel:
        lines.append(f"| mean relative weight error ‖Ŵ−W‖/‖W‖ | {sum(rel) / len(rel):.4f} |")
    if act:
        lines.append(f"| mean activation error ‖(Ŵ−W)L‖/‖WL‖ on calibration inputs | {sum(act) / len(act):.4f} |")
    means = tuning_means(finetune)
    if means:
        start, end, n, undone = means
        undone_note = f"; undone in {undone} where it made the error worse" if undone else ""
        lines.append(f"| block-local tuning | block-output error {start:.4f} → {end:.4f} (mean over {n} blocks"
                     f"{undone_note}) |")
    elif finetune and "steps" in finetune:
        lines.append(f"| fine-tune | {finetune['steps']} steps, distillation loss {finetune['loss_start']:.4f} → "
                     f"{finetune['loss_end']:.4f} |")
    lines += ["", "## How it was made", ""]
    recipe = (provenance or {}).get("recipe")
    if recipe:
        lines += [f"With the recipe `{recipe['name']}` (sha256 `{recipe['sha256'][:12]}…`), stored in full in the "
                  "checkpoint's metadata.", ""]
    elif config is not None:
        lines += ["```bash", command_line(src.display, out, config), "```", ""]
    lines += ["## Use it", "", "```python", "import sinecompress  # registers the format with transformers",
              "model = sinecompress.load(\"path/to/this/directory\")", "```", "",
              "`sinecompress inflate` writes plain dense weights that stock tools load without sinecompress.", ""]
    return _render(front, "\n".join(lines))


def dense_card(src: Source, what: str, detail: str) -> str:
    """The card of a dense output made from ``src`` (inflated, or an adapter merged in)."""
    front = {k: v for k, v in {"base_model": base_model(src), "library_name": "transformers",
                               "license": original_front_matter(src).get("license"),
                               "tags": ["sinecompress", what]}.items() if v}
    body = f"# {what}\n\n{detail}\n\nMade by sinecompress {__version__} from `{src.display}`.\n"
    return _render(front, body)


def adapter_card(config: dict, modules: int, params: int) -> str:
    """The card of a saved adapter, as peft writes one: front matter, then what it is and how to load it.
    Plain LoRA / DoRA adapters are peft's own format; the sine kinds load through sinecompress."""
    sine = config.get("sinecompress") or {}
    kind = sine.get("kind") or ("dora" if config.get("use_dora") else "lora")
    base = config.get("base_model_name_or_path")
    front = {k: v for k, v in {"base_model": base if isinstance(base, str) and HUB_ID.fullmatch(base) else None,
                               "library_name": "sinecompress" if sine else "peft",
                               "tags": ["sinecompress", kind.replace("_", "-"), "adapter"]}.items() if v}
    update = sine.get("update") or ("W0 + (alpha / r) * B @ A" + (", then DoRA's row renormalisation"
                                                                   if kind == "dora" else ""))
    rows = [("kind", kind), ("rank r", config["r"]), ("lora_alpha", config["lora_alpha"])]
    if sine:
        rows.append(("ω", sine["omega"]))
    rows += [("adapted modules", modules), ("trainable parameters", f"{params:,}"), ("update", f"`{update}`")]
    load = ("from sinecompress.adapters import load_adapter\nload_adapter(model, \"ADAPTER_DIR\")" if sine else
            "from peft import PeftModel\nmodel = PeftModel.from_pretrained(model, \"ADAPTER_DIR\")")
    body = (f"# {kind} adapter\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
            + f"\nLoad it onto its base model:\n\n```python\n{load}\n```\n\n"
            f"Merge it into dense weights: `sinecompress adapter merge BASE ADAPTER_DIR --out MERGED`.\n\n"
            f"Made by sinecompress {__version__}.\n")
    return _render(front, body)
