"""`sinecompress recipe validate|init|show`: thin wrappers over sinecompress.recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from ..io.atomic import atomic_output
from ..recipe.run import recipe_plan, rule_table
from ..recipe.schema import load_recipe
from ..recipe.shipped import shipped_names, shipped_text, summary_line
from ..recipe.template import TEMPLATE
from ._console import err_console
from .app import app
from .json_out import print_json

recipe_app = typer.Typer(help="YAML recipes: validate, write a template, and preview which layers they match.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(recipe_app, name="recipe")

@recipe_app.command("validate")
def validate_cmd(file: Path = typer.Argument(..., help="Recipe YAML file to check."),
                 as_json: bool = typer.Option(False, "--json", help="Print the parsed recipe as JSON on stdout.")):
    """Check a recipe's schema, types and regexes without opening any model; errors say FILE:LINE."""
    r = load_recipe(file)
    if as_json:
        print_json({"path": r.path, "sha256": r.sha256, "version": r.version, "model": r.model,
                          "output": r.output, "settings": {k: _plain(v) for k, v in r.settings.items()},
                          "config": r.config.to_dict(), "gates": r.gates}, indent=2)
    err_console.print(f"{file}: ok (recipe version {r.version}, {len(r.rules)} rules, "
                      f"gates: {', '.join(r.gates) or 'none'})", markup=False, highlight=False, soft_wrap=True)


@recipe_app.command("init")
def init_cmd(out: Path = typer.Option(None, "--out", "-o", metavar="PATH", help="Write the template here (default: stdout)."),
             source: str = typer.Option(None, "--from", metavar="NAME", help="Start from a shipped recipe "
                                        "(see `sinecompress recipe list`) instead of the generic template."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file.")):
    """Write a commented recipe template (or a shipped recipe) to start from."""
    text = TEMPLATE if source is None else shipped_text(source)
    if out is None:
        print(text, end="")
        return
    with atomic_output(out, overwrite, replaceable=_not_yaml) as tmp:
        tmp.write_text(text, encoding="utf-8")
    err_console.print(f"wrote {out}; next: sinecompress recipe validate {out}", markup=False, highlight=False, soft_wrap=True)


@recipe_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print the names and summaries as JSON.")):
    """The recipes that ship with sinecompress (use one with `factorize --recipe NAME` or `recipe init --from NAME`)."""
    rows = {name: summary_line(name) for name in shipped_names()}
    if as_json:
        print_json(rows, indent=2)
        return
    for name, line in rows.items():
        print(f"{name:10} {line}")


def _not_yaml(path: Path) -> str | None:
    return None if path.suffix in (".yaml", ".yml") else "is not a .yaml file"


@recipe_app.command("show")
def show_cmd(file: Path = typer.Argument(..., help="Recipe YAML file."),
             model: str = typer.Option(None, "--model", "-m", metavar="SOURCE", help="Model to match against (default: the "
                                       "recipe's `model`)."),
             as_json: bool = typer.Option(False, "--json", help="Print the rules and the plan as JSON on stdout.")):
    """List which layers each rule matches (first match wins) and their settings; compresses nothing."""
    r, plan, _ = recipe_plan(file, {"model": model})
    rows = rule_table(plan)
    if as_json:
        print_json({"recipe": r.path, "model": plan.source, "rules": rows, "plan": plan.to_dict()}, indent=2)
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


def _plain(v):
    return [vars(x) if hasattr(x, "__dataclass_fields__") else x for x in v] if isinstance(v, (list, tuple)) else v
