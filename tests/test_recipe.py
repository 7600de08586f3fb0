"""YAML recipes: schema errors with FILE:LINE, rules, overrides, gates, exit codes, reproducibility."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open

from sinecompress.errors import UsageError
from sinecompress.format import read_metadata
from sinecompress.gates import check_gates, raise_if_failed
from sinecompress.plan import Rule
from sinecompress.recipe import TEMPLATE, factorize_kwargs, load_recipe, parse_recipe
from sinecompress.recipe_run import recipe_plan, run_recipe

from .conftest import ROOT, run_cli

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def bert_recipe(tmp_path, model, gates="{max_param_ratio: 0.9, max_rel_error: 0.99}", name="r.yaml"):
    return write(tmp_path, f"""
        version: 1
        model: {model}
        output: {tmp_path / 'out'}
        defaults: {{method: sine, rank: 8, omega: 100, fit_steps: 5}}
        targets:
          - match: 'encoder\\.layer\\.0\\.intermediate\\.dense'
            method: svd
            rank: 4
          - match: 'encoder\\.layer\\.\\d+\\.(intermediate|output)\\.dense'
        gates: {gates}
        """, name)


# --- schema -------------------------------------------------------------------------------------

def test_shipped_recipes_and_template_validate():
    assert {p.name for p in RECIPES} == {"minilm.yaml", "vit.yaml", "convnext.yaml", "llama.yaml"}
    for p in RECIPES:
        r = load_recipe(p)
        assert r.version == 1 and r.targets and r.gates and r.model and r.output
    t = parse_recipe(TEMPLATE, "template.yaml")
    assert t.targets[0].rank == 96 and t.defaults["rank"] == 64


def test_misspelt_key_exits_2_with_its_line(tmp_path):
    p = write(tmp_path, """
        version: 1
        model: m.safetensors
        targts:
          - match: x
        """)
    r = run_cli("recipe", "validate", p)
    assert r.returncode == 2
    assert f"{p}:3: unknown key 'targts' (did you mean 'targets'?)" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    good = run_cli("recipe", "validate", RECIPES[0])
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("text, line, words", [
    ("version: 1\ndefaults:\n  rank: abc\n", 3, "defaults.rank must be a positive integer, got 'abc'"),
    ("version: 1\ndefaults:\n  rnk: 3\n", 3, "unknown key 'rnk' in defaults (did you mean 'rank'?)"),
    ("version: 1\ntargets:\n  - match: a\n  - match: '('\n", 4, "targets[1].match must be a valid regular expression"),
    ("version: 1\ntargets:\n  - rank: 3\n", 3, "targets[0] is missing the required key 'match'"),
    ("version: 1\ndefaults: {rank: 3, param_ratio: 0.2}\n", 2, "has both rank and param_ratio"),
    ("version: 2\n", 1, "recipe version 2 is not supported"),
    ("model: x\n", 1, "missing the required key 'version'"),
    ("version: 1\ngates:\n  min_cosine: 2\n", 3, "gates.min_cosine must be a number in [-1, 1], got 2"),
    ("version: 1\ngates:\n  max_param_ratio: yes\n", 3, "gates.max_param_ratio must be"),
    ("version: 1\nfinetune: {device: tpu}\n", 2, "finetune.device must be one of auto, cpu, cuda"),
    ("version: 1\nversion: 1\n", 2, "duplicate key 'version'"),
    ("version: 1\ntargets: {match: a}\n", 2, "targets must be a list"),
    ("version: 1\ndefaults: [1]\n", 2, "defaults must be a mapping"),
    ("version: 1\nmodel: [a\n", 3, "invalid YAML"),
    ("", 1, "empty recipe"),
])
def test_recipe_errors_name_line_and_key(text, line, words):
    with pytest.raises(UsageError) as e:
        parse_recipe(text, "f.yaml")
    msg = str(e.value)
    assert msg.startswith(f"f.yaml:{line}: "), msg
    assert words in msg, msg


def test_yaml_quirks_are_accepted():
    r = parse_recipe("version: 1\nfinetune: {lr: 1e-4, steps: 0}\nexclude: 'a.*'\ndefaults: {omega: 30}\n")
    assert r.finetune["lr"] == 1e-4 and r.exclude == ["a.*"] and r.defaults["omega"] == 30.0


def test_unsupported_pass_through_key_is_an_error_not_ignored():
    r = parse_recipe("version: 1\ndefaults: {rank: 4}\ncalibration:\n  source: calib.txt\n  samples: 64\n", "c.yaml")
    with pytest.raises(UsageError, match=r"c.yaml:4: 'calibration.source' is not supported"):
        factorize_kwargs(r, {"method", "rank"})
    kw = factorize_kwargs(r, {"calib", "calib_samples"})
    assert kw["calib"] == "calib.txt" and kw["calib_samples"] == 64


def test_cli_overrides_replace_recipe_values():
    r = parse_recipe("version: 1\ndefaults: {rank: 4, omega: 50}\ntargets:\n  - {match: a, rank: 9, omega: 7}\n"
                     "finetune: {seed: 3}\n")
    kw = factorize_kwargs(r, set())
    assert kw["rules"] == [Rule("a", None, 9, None, 7.0)] and kw["seed"] == 3 and kw["omega"] == 50.0
    kw = factorize_kwargs(r, set(), {"param_ratio": 0.2, "omega": 80.0, "seed": 1})
    assert kw["rules"] == [Rule("a")] and kw["rank"] is None and kw["param_ratio"] == 0.2
    assert kw["omega"] == 80.0 and kw["seed"] == 1
    assert factorize_kwargs(r, set(), {"targets": ["b"]})["rules"] == [Rule("b")]


# --- plan, show, factorize ---------------------------------------------------------------------

def test_first_matching_rule_wins(tiny_bert_dir, tmp_path):
    _, plan, _ = recipe_plan(bert_recipe(tmp_path, tiny_bert_dir))
    got = {lp.name: (lp.rule, lp.method, lp.rank) for lp in plan.layers}
    assert got == {"encoder.layer.0.intermediate.dense": (0, "svd", 4),
                   "encoder.layer.0.output.dense": (1, "sine", 8),
                   "encoder.layer.1.intermediate.dense": (1, "sine", 8),
                   "encoder.layer.1.output.dense": (1, "sine", 8)}


def test_show_matches_what_factorize_compresses(tiny_bert_dir, tmp_path):
    p = bert_recipe(tmp_path, tiny_bert_dir, gates="{max_param_ratio: 0.9}")
    show = run_cli("recipe", "show", p, "--json")
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert not (tmp_path / "out").exists()  # show compresses nothing
    run = run_cli("factorize", "--recipe", p, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    done = [(x["name"], x["method"], x["rank"]) for x in summary["layers"] if not x["kept_dense"]]
    planned = [(x["name"], x["method"], x["rank"]) for x in shown["plan"]["layers"] if not x["keep_dense"]]
    assert done == planned and len(done) == 4
    assert [row["layers"] for row in shown["rules"]] == [
        ["encoder.layer.0.intermediate.dense"],
        ["encoder.layer.0.output.dense", "encoder.layer.1.intermediate.dense", "encoder.layer.1.output.dense"]]
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        doc = read_metadata(f.metadata(), "out")
    assert doc["recipe"]["text"] == p.read_text() and doc["recipe"]["sha256"] == summary["recipe"]["sha256"]
    assert doc["plan"]["rules"][0]["method"] == "svd"
    assert [lp["rule"] for lp in doc["plan"]["layers"]] == [0, 1, 1, 1]
    assert "effective plan" in run.stderr


def test_failing_gate_exits_1_and_writes_output(tmp_path, tiny_file):
    p = write(tmp_path, f"""
        version: 1
        model: {tiny_file}
        output: {tmp_path / 'o.safetensors'}
        defaults: {{rank: 4, fit_steps: 3}}
        targets: [{{match: 'blocks\\.\\d+\\.fc1'}}]
        gates: {{max_rel_error: 0.001, max_param_ratio: 0.99}}
        """)
    r = run_cli("factorize", "--recipe", p)
    assert r.returncode == 1, r.stderr
    assert (tmp_path / "o.safetensors").exists()
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gate failed: max_rel_error") and "o.safetensors" in last
    assert "max_param_ratio" not in last  # the passing gate is not named as failing
    assert "Traceback" not in r.stderr
    # the same recipe with flags overriding model, output and rank: gate still fails, output still written
    r2 = run_cli("factorize", "--recipe", p, tiny_file, "--out", tmp_path / "o2.safetensors", "--rank", "2")
    assert r2.returncode == 1 and (tmp_path / "o2.safetensors").exists()


def test_passing_recipe_writes_output_and_min_cosine_needs_hf_dir(tmp_path, tiny_file):
    base = f"""
        version: 1
        model: {tiny_file}
        output: {tmp_path / 'sub' / 'o.safetensors'}
        defaults: {{rank: 4, fit_steps: 3}}
        """
    s = run_recipe(write(tmp_path, base + "gates: {max_rel_error: 1.5, max_param_ratio: 0.9}\n"))
    assert s["passed"] and [g["gate"] for g in s["gates"]] == ["max_param_ratio", "max_rel_error"]
    assert (tmp_path / "sub" / "o.safetensors").exists()
    raise_if_failed(s["gates"], s["output"])  # no exception
    with pytest.raises(UsageError, match="min_cosine runs the model, so it needs a Hugging Face model directory"):
        run_recipe(write(tmp_path, base.replace("o.safetensors", "o3.safetensors") + "gates: {min_cosine: 0.5}\n",
                         "c.yaml"))
    assert not (tmp_path / "sub" / "o3.safetensors").exists()  # failed before fitting


def test_gate_arithmetic():
    summary = {"layers": [
        {"name": "a", "params_before": 100, "params_after": 20, "rel_error": 0.5},
        {"name": "b", "params_before": 100, "params_after": 100, "rel_error": None},  # kept dense
        {"name": "c", "params_before": 200, "params_after": 40, "rel_error": 0.7}]}
    res = {r["gate"]: r for r in check_gates({"max_param_ratio": 0.4, "max_rel_error": 0.6}, summary)}
    assert res["max_param_ratio"]["value"] == pytest.approx(160 / 400) and res["max_param_ratio"]["passed"]
    assert res["max_rel_error"]["value"] == 0.7 and not res["max_rel_error"]["passed"]
    assert "worst layer c" in res["max_rel_error"]["detail"]


def test_same_recipe_and_seed_give_byte_identical_output(tmp_path, tiny_bert_dir):
    p = bert_recipe(tmp_path, tiny_bert_dir, gates="{}")
    a = run_recipe(p, {"output": str(tmp_path / "a")})
    b = run_recipe(p, {"output": str(tmp_path / "b")})
    files = sorted(f.name for f in (tmp_path / "a").iterdir())
    assert files == sorted(f.name for f in (tmp_path / "b").iterdir()) and "model.safetensors" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a["layers"] == b["layers"]
    c = run_recipe(p, {"output": str(tmp_path / "c"), "seed": 1})
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (tmp_path / "a" / "model.safetensors").read_bytes()
    assert c["recipe"]["overrides"] == {"seed": 1}


def test_recipe_init_writes_a_valid_template(tmp_path):
    out = tmp_path / "new.yaml"
    r = run_cli("recipe", "init", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == TEMPLATE and load_recipe(out).version == 1
    again = run_cli("recipe", "init", "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr
