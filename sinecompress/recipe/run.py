"""Running a recipe: plan it (``recipe show``), or factorize with it and check its gates.

Both paths build the plan with the same ``build_plan`` call, so ``recipe show`` lists exactly the
layers and settings that ``factorize --recipe`` then compresses.
"""

from __future__ import annotations

from pathlib import Path

from ..config import FactorizeConfig, override
from ..errors import SettingError, UsageError
from ..io.open import open_source
from ..io.paths import make_output_parent
from ..io.sources import Source
from ..matching import compile_patterns, linear_modules, module_name
from ..pipeline.factorize import factorize
from ..pipeline.plan import Plan, build_plan
from ..progress import Progress
from .gates import check_gates, needs_model_dir
from .schema import Recipe, load_recipe

PLACES = ("model", "output")  # what a command line gives besides settings: the source and the output


def resolve(recipe: Recipe | str | Path, overrides: dict | None = None) -> tuple[Recipe, FactorizeConfig, str, str | None]:
    """(recipe, config, model, output): the recipe's, with the command line's ``overrides`` on top
    (flat settings, plus ``model`` and ``output``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    settings = {k: v for k, v in overrides.items() if k not in PLACES}
    try:
        config = override(recipe.config, **settings)
    except SettingError as e:
        raise UsageError(f"{recipe.path}: {e}") from None
    model = overrides.get("model", recipe.model)
    if not model:
        raise UsageError(f"{recipe.path}: no model; add `model: PATH` to the recipe or pass the model on the command line")
    return recipe, config, model, overrides.get("output", recipe.output)


def check_rules(recipe: Recipe, src: Source, config: FactorizeConfig) -> None:
    """Each rule must match a 2-D weight; say so with the rule's line, and explain 1×1 convolutions."""
    dense = linear_modules(src.shapes, src.dtypes)
    conv1x1 = [module_name(k) for k, t in src.tensors.items()
               if k.endswith(".weight") and len(t.shape) == 4 and tuple(t.shape[2:]) == (1, 1)]
    from_recipe = config.rules == recipe.rules
    for i, r in enumerate(config.rules):
        p = compile_patterns([r.match], "rule")[0]
        if any(p.fullmatch(c) for c in dense):
            continue
        where = recipe.where(f"targets[{i}].match") if from_recipe else f"{recipe.path}: --target"
        convs = [c for c in conv1x1 if p.fullmatch(c)]
        if convs:
            raise UsageError(f"{where}: {r.match!r} matches only 1x1 convolutions (e.g. {convs[0]!r}, weight "
                             f"{list(src.tensors[convs[0] + '.weight'].shape)}); factorize compresses 2-D linear "
                             "weights only. timm ConvNeXt `conv_mlp` variants (atto..nano) use such convolutions: "
                             "use a variant with linear MLPs (convnext_tiny and up)")
        raise UsageError(f"{where}: {r.match!r} matches no 2-D weight in {src.display}; patterns match whole module "
                         "names (tensor name minus '.weight'); run `sinecompress recipe show` to list them")


def recipe_plan(recipe: Recipe | str | Path, overrides: dict | None = None) -> tuple[Recipe, Plan, Source]:
    """The plan factorize would follow, without fitting anything (``recipe show``)."""
    recipe, config, model, _ = resolve(recipe, overrides)
    src = open_source(model, allow_pickle=config.allow_pickle)
    check_rules(recipe, src, config)
    try:
        plan = build_plan(src, config)
    except UsageError as e:
        raise UsageError(f"{_where(recipe, str(e))}: {e}") from None
    return recipe, plan, src


def _where(recipe: Recipe, msg: str) -> str:
    """FILE:LINE of the exclude pattern an error names, else just FILE."""
    for i, x in enumerate(recipe.exclude):
        if msg.startswith(f"--exclude {x!r}"):
            return recipe.where(f"exclude[{i}]")
    return recipe.path


def rule_table(plan: Plan) -> list[dict]:
    """For each rule, the layers it sets (first match wins), plus layers no rule set."""
    rows = [{"rule": i, "match": r.match, "layers": [lp.name for lp in plan.layers if lp.rule == i]}
            for i, r in enumerate(plan.rules)]
    rest = [lp.name for lp in plan.layers if lp.rule is None]
    if rest or not plan.rules:
        rows.append({"rule": None, "match": None, "layers": rest})
    return rows


def run_recipe(recipe: Recipe | str | Path, overrides: dict | None = None, *,
               progress: Progress | None = None) -> dict:
    """Factorize as the recipe says, then check its gates. Returns the summary plus ``recipe``/``gates``.

    Never raises for a failing gate (the caller decides; the CLI exits 1 via ``gates.raise_if_failed``).
    """
    recipe, config, model, output = resolve(recipe, overrides)
    if not output:
        raise UsageError(f"{recipe.path}: no output; add `output: PATH` to the recipe or pass --out")
    src = open_source(model, allow_pickle=config.allow_pickle)
    make_output_parent(Path(output), src.paths())  # recipes name paths like out/model; CI starts clean
    needs_model_dir(recipe.gates, src.side_dir(), src.display)
    check_rules(recipe, src, config)
    # Where the output went is not part of how it was made: leave it out, so outputs stay byte-identical.
    applied = {k: v for k, v in (overrides or {}).items() if v is not None and k != "output"}
    provenance = {"recipe": {"name": Path(recipe.path).name, "sha256": recipe.sha256, "text": recipe.text,
                             "overrides": applied, "gates": recipe.gates}}
    try:
        reads = [recipe.path] if Path(recipe.path).exists() else []
        summary = factorize(model, output, config, progress=progress, provenance=provenance, reads=reads)
    except UsageError as e:
        raise UsageError(f"{_where(recipe, str(e))}: {e}") from None
    results = check_gates(recipe.gates, summary, src, Path(output))
    summary["recipe"] = {"path": recipe.path, "sha256": recipe.sha256, "overrides": applied}
    summary["gates"] = results
    summary["passed"] = all(r["passed"] for r in results)
    return summary
