"""Rich rendering of a recipe's effective plan and its gate results, on stderr."""

from __future__ import annotations

from rich.table import Table

from ._console import err_console


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
