"""`sinecompress eval`: thin wrapper over sinecompress.evaluate.evaluate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..config import resolve_device
from ..report.evaluate import DEFAULT_MAX_TOKENS, DEFAULT_WINDOW, evaluate
from ._console import err_console
from .app import app
from .json_out import print_json
from .progress import run_progress


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="The model to evaluate: a compressed or dense Hugging Face model "
                                "directory (config.json, weights, tokenizer), example:minilm, or a .gguf file."),
    against: str = typer.Option(None, "--against", metavar="ORIG", help="The reference (usually the original the model was "
                                "compressed from), same forms as MODEL. Required for encoders."),
    text: Path = typer.Option(None, "--text", metavar="FILE", help="Evaluation text: one text per line, or JSONL "
                              '{"text": ...} (.jsonl). Default: built-in held-out text (Python stdlib '
                              "docstrings, never used for calibration)."),
    window: int = typer.Option(None, "--window", metavar="TOKENS", help=f"Tokens per window for perplexity; for encoders, the "
                               f"most tokens per text. Default: {DEFAULT_WINDOW}, or the model's context if shorter."),
    stride: int = typer.Option(None, "--stride", metavar="TOKENS", help="Tokens between window starts (perplexity); each "
                               "window scores only tokens no earlier window scored. Default: window/2."),
    max_tokens: int = typer.Option(None, "--max-tokens", metavar="N", help="Evaluate on the first N tokens of the text "
                                   f"(encoders: the first texts fitting in N tokens); 0 = all. Default: "
                                   f"{DEFAULT_MAX_TOKENS['causal_lm']} for causal LMs, "
                                   f"{DEFAULT_MAX_TOKENS['encoder']} for encoders."),
    device: str = typer.Option("auto", "--device", metavar="auto|cpu|cuda", help="auto (CUDA when available), cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
):
    """Measure a (compressed) model: perplexity for causal LMs (and the ratio to --against), or embedding
    cosine and nearest-neighbour agreement with --against for encoders. Tables go to stderr."""
    with run_progress() as bars:  # the factorize command's progress: bars on a terminal, lines in a log
        stage = None

        def progress(what: str, done: int, total: int | None):
            nonlocal stage
            if what != stage:
                stage = what
                bars.stage(what, total)
            if done:
                bars.advance(done)

        result = evaluate(model, against=against, text=text, window=window, stride=stride,
                          max_tokens=max_tokens, device=resolve_device(device), progress=progress)
    print_result(result)
    if as_json:
        print_json(result, indent=2)


def print_result(r: dict) -> None:
    s = r["settings"]
    causal = r["kind"] == "causal_lm"
    t = Table(title=f"eval on {r['text']}", title_justify="left")
    t.add_column("")
    t.add_column("path", overflow="fold")  # the only column that may wrap
    cols = ("compressed",) + (("perplexity", "scored tokens") if causal else ()) + ("eval", "load")
    for col in cols:
        t.add_column(col, no_wrap=True, justify="left" if col == "compressed" else "right")
    for role in ("model", "against"):
        run = r.get(role)
        if not run:
            continue
        cells = [role, run["path"], "yes" if run["compressed"] else "no"]
        if causal:
            cells += [_number(run["perplexity"], 3), f"{run['scored_tokens']:,}"]
        cells += [f"{run['seconds']:.1f} s", f"{run['load_seconds']:.1f} s"]
        t.add_row(*cells)
    err_console.print(t)
    if causal:
        err_console.print(f"window {s['window']}, stride {s['stride']}: {r['model']['windows']} windows over the "
                          f"first {r['model']['tokens']:,} tokens",
                          highlight=False, markup=False)
        if r.get("against"):
            err_console.print(f"perplexity ratio (model / against): {_number(r['perplexity_ratio'], 4)}",
                              highlight=False, markup=False)
            if not r["same_tokens"]:
                err_console.print("warning: the two tokenizers split the text differently; the perplexities "
                                  "are per token of different token streams", highlight=False, markup=False)
    else:
        a = r["agreement"]
        err_console.print(f"embedding cosine: mean {a['cosine']:.4f}, worst {a['cosine_min']:.4f}; "
                          f"nearest-neighbour agreement {a['nn_agreement']:.1%} over {a['texts']} texts "
                          f"({a['tokens']:,} tokens)", highlight=False, markup=False)


def _number(x: float, decimals: int) -> str:
    """Fixed decimals, or scientific past a million, so a broken model's value does not squeeze the table."""
    return f"{x:.{decimals}f}" if abs(x) < 1e6 else f"{x:.3e}"
