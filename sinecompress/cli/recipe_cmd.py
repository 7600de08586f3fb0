"""`sinecompress recipe validate|init|show`, and `factorize --recipe`: thin wrappers over recipe_run."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import typer
from rich.table import Table

from ..factorize import factorize
from ..gates import raise_if_failed
from ..recipe import TEMPLATE, factorize_kwargs, load_recipe
from ..recipe_run import recipe_plan, rule_table, run_recipe
from ..writer import atomic_output
from . import app
from ._console import err_console

recipe_app = typer.Typer(help="YAML recipes: validate, write a template, and preview which layers they match.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(recipe_app, name="recipe")

# factorize flag -> recipe override key
FLAG_TO_KEY = {"source": "model", "out": "output", "rank": "rank", "param_ratio": "param_ratio", "omega": "omega",
               "method": "method", "target": "targets", "exclude": "exclude", "fit_steps": "steps", "steps": "ft_steps", "seed": "seed",
               "allocate": "allocate", "sequential": "sequential"}


def factorize_with_recipe(ctx: typer.Context, recipe: Path, overwrite: bool, as_json: bool) -> None:
    """`factorize --recipe FILE`: flags given on the command line override the recipe's values."""
    from .factorize_cmd import progress_bar
    from .summary_view import print_summary

    overrides = {}
    for flag, key in FLAG_TO_KEY.items():
        # by name: typer vendors its own click, so click.core.ParameterSource is a different enum
        given = getattr(ctx.get_parameter_source(flag), "name", None) == "COMMANDLINE"
        if given and ctx.params[flag] not in (None, []):
            value = ctx.params[flag]
            overrides[key] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, (list, tuple)) else value
    r, plan, _ = recipe_plan(recipe, overrides)
    print_plan(plan, r.path)
    with progress_bar() as bar:
        task = bar.add_task("fitting", total=None, layer="")

        def report(name: str, done: int, total: int):
            bar.update(task, total=total, completed=done, layer=name)

        summary = run_recipe(r, overrides, overwrite=overwrite, progress=report)
    print_summary(summary)
    print_gates(summary["gates"])
    if as_json:
        print(json.dumps(summary, indent=2))
    raise_if_failed(summary["gates"], summary["output"])


def print_plan(plan, name: str) -> None:
    rules = "; ".join(f"#{i} {r.match}" for i, r in enumerate(plan.rules))
    t = Table(title=f"effective plan ({name})", title_justify="left", caption=f"rules: {rules}" if rules else None,
              caption_justify="left")
    for col in ("layer", "rule", "method", "rank", "ω", "note"):
        t.add_column(col, overflow="fold")
    for lp in plan.layers:
        rule = "defaults" if lp.rule is None else f"#{lp.rule}"
        t.add_row(lp.name, rule, lp.method, str(lp.rank), f"{lp.omega:g}" if lp.omega else "-", lp.keep_dense or "")
    err_console.print(t)


def print_gates(results: list[dict]) -> None:
    for r in results:
        mark = "PASS" if r["passed"] else "FAIL"
        err_console.print(f"gate {r['gate']}: {mark}  value {r['value']:.4f}, limit {r['limit']:g}  ({r['detail']})",
                          markup=False, highlight=False, soft_wrap=True)


@recipe_app.command("validate")
def validate_cmd(file: Path = typer.Argument(..., help="Recipe YAML file to check."),
                 as_json: bool = typer.Option(False, "--json", help="Print the parsed recipe as JSON on stdout.")):
    """Check a recipe's schema, types and regexes without opening any model; errors say FILE:LINE."""
    r = load_recipe(file)
    factorize_kwargs(r, set(inspect.signature(factorize).parameters))  # keys this build cannot honour
    if as_json:
        print(json.dumps({"path": r.path, "sha256": r.sha256, "version": r.version, "model": r.model,
                          "output": r.output, "defaults": r.defaults, "targets": [vars(t) for t in r.targets],
                          "exclude": r.exclude, "calibration": r.calibration, "finetune": r.finetune,
                          "gates": r.gates}, indent=2))
    err_console.print(f"{file}: ok (recipe version {r.version}, {len(r.targets)} rules, "
                      f"gates: {', '.join(r.gates) or 'none'})", markup=False, highlight=False, soft_wrap=True)


@recipe_app.command("init")
def init_cmd(out: Path = typer.Option(None, "--out", "-o", help="Write the template here (default: stdout)."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file.")):
    """Write a commented recipe template to start from."""
    if out is None:
        print(TEMPLATE, end="")
        return
    with atomic_output(out, overwrite) as tmp:
        tmp.write_text(TEMPLATE, encoding="utf-8")
    err_console.print(f"wrote {out}; next: sinecompress recipe validate {out}", markup=False, highlight=False, soft_wrap=True)


@recipe_app.command("show")
def show_cmd(file: Path = typer.Argument(..., help="Recipe YAML file."),
             model: str = typer.Option(None, "--model", "-m", help="Model to match against (default: the "
                                       "recipe's `model`)."),
             as_json: bool = typer.Option(False, "--json", help="Print the rules and the plan as JSON on stdout.")):
    """List which layers each rule matches (first match wins) and their settings; compresses nothing."""
    r, plan, _ = recipe_plan(file, {"model": model})
    rows = rule_table(plan)
    if as_json:
        print(json.dumps({"recipe": r.path, "model": plan.source, "rules": rows, "plan": plan.to_dict()}, indent=2))
        return
    by_name = {lp.name: lp for lp in plan.layers}
    for row in rows:
        head = "no rule (defaults)" if row["rule"] is None else f"rule #{row['rule']} '{row['match']}'"
        print(f"{head}: {len(row['layers'])} layer(s)")
        for name in row["layers"]:
            lp = by_name[name]
            extra = f" ω={lp.omega:g}" if lp.omega else ""
            dense = f"  [stays dense: {lp.keep_dense}]" if lp.keep_dense else ""
            print(f"  {name}  {lp.shape[0]}x{lp.shape[1]}  {lp.method} rank {lp.rank}{extra}{dense}")
