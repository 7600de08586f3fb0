"""`sinecompress factorize`: thin wrapper over sinecompress.factorize (or a recipe run)."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import signals
from ..config import make_config
from ..errors import UsageError
from ..pipeline.factorize import factorize
from ..pipeline.workdir import work_path
from ..recipe.gates import raise_if_failed
from ..recipe.run import run_recipe
from .app import app
from .json_out import print_json
from .progress import run_progress
from .recipe_view import print_gates
from .settings import given_settings, option
from .summary_view import print_summary


@app.command("factorize")
def factorize_cmd(
    ctx: typer.Context,
    source: str = typer.Argument(None, metavar="SOURCE", help="A .safetensors file, a sharded or Hugging Face model directory, "
                                 "a .gguf file, example:minilm or example:smollm2 (bundled models)."),
    out: Path = typer.Option(None, "--out", "-o", metavar="PATH", help="Output path: a .safetensors file for a file input, "
                             "a directory for a directory input."),
    rank: int = option("rank", "--rank", "-k"),
    param_ratio: float = option("param_ratio"),
    allocate: str = option("allocate"),
    omega: str = option("omega"),
    method: str = option("method"),
    targets: list[str] = option("targets"),
    exclude: list[str] = option("exclude"),
    # --- calibration and fitting (docs/fitting.md) ---
    calib: Path = option("calib"),
    calib_samples: str = option("calib_samples"),
    seq_len: int = option("seq_len"),
    calib_pack: bool = option("calib_pack", "--calib-pack/--no-calib-pack", show_default=False),
    sequential: bool = option("sequential", "--sequential/--no-sequential", show_default=False),
    no_calib: bool = option("calibration", "--no-calib", default=False,
                            help="Skip calibration: fit weights only (faster, worse)."),
    finetune_steps: str = option("finetune_steps", "--steps", "--finetune-steps"),
    finetune: str = option("finetune"),
    tune_target: str = option("tune_target"),
    tune_rows: int = option("tune_rows"),
    fit_steps: int = option("fit_steps"),
    fallback: bool = option("fallback", "--fallback/--no-fallback"),
    lr: str = option("lr"),
    device: str = option("device"),
    seed: int = option("seed"),
    overwrite: bool = option("overwrite"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    resume: bool = option("resume"),
    max_shard_size: str = option("max_shard_size"),
    allow_pickle: bool = option("allow_pickle"),
    workers: int = option("workers"),
    recipe: Path = typer.Option(None, "--recipe", metavar="FILE", help="YAML recipe (docs/recipes.md) giving model, output, "
                                "settings and gates; flags given here override it. Exit 1 if a gate fails."),
):
    """Factorise the chosen dense layers of a checkpoint into sine low-rank form."""
    given = given_settings(ctx)
    for key, flag, what in (("finetune_steps", "--steps", "a non-negative"),
                            ("calib_samples", "--calib-samples", "a positive")):
        if key in given and given[key] != "auto":
            given[key] = _int_or_auto(given[key], flag, what)
    if "lr" in given and given["lr"] != "auto":
        given["lr"] = _number(given["lr"])  # anything else: the config's check names --lr and the value
    try:
        if recipe is not None:
            overrides = {**given, "model": source, "output": None if out is None else str(out)}
            with run_progress() as progress:  # the plan itself: `sinecompress recipe show`
                summary = run_recipe(recipe, overrides, progress=progress)
        elif source is None or out is None:
            raise UsageError("give SOURCE and --out OUT (or --recipe FILE)")
        else:
            config = make_config(**given)
            with run_progress() as progress:
                summary = factorize(source, out, config, progress=progress)
    except BaseException:
        if signals.received is not None and out is not None and work_path(out).is_dir():
            signals.received.hint = f"fitted layers are kept in {work_path(out)}; rerun with --resume to continue"
        raise
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    print_summary(summary)
    if recipe is not None:
        print_gates(summary["gates"])
    if as_json:
        print_json(summary, indent=2)
    if recipe is not None:
        raise_if_failed(summary["gates"], summary["output"])


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _int_or_auto(text: str, flag: str, what: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{flag} must be {what} integer or 'auto', got {text!r}") from None
