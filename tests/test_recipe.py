"""YAML recipes: schema errors with FILE:LINE, rules, overrides, gates, exit codes, reproducibility."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sinecompress
from sinecompress import LowRankLinear, SineLowRankLinear
from sinecompress.config import Rule, make_config, override
from sinecompress.errors import UsageError
from sinecompress.io.format import read_metadata
from sinecompress.io.open import open_source
from sinecompress.pipeline.plan import build_plan
from sinecompress.recipe.gates import check_gates, raise_if_failed
from sinecompress.recipe.run import recipe_plan, run_recipe
from sinecompress.recipe.schema import load_recipe, parse_recipe
from sinecompress.recipe.template import TEMPLATE

from .helpers import assert_one_line_error, cli

SHIPPED = Path(sinecompress.__file__).parent / "recipe" / "shipped"  # recipes that ship in the package
RECIPES = sorted(SHIPPED.glob("*.yaml"))


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
        calibration: {{enabled: false}}  # weight-only: these tests are about rules, plans and outputs
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
        assert r.version == 1 and r.rules and r.gates and r.model and r.output
    t = parse_recipe(TEMPLATE, "template.yaml")
    assert t.rules[0].rank == 96 and t.settings["rank"] == 64 and t.config.rank == 64


def test_misspelt_key_exits_2_with_its_line(tmp_path):
    p = write(tmp_path, """
        version: 1
        model: m.safetensors
        targts:
          - match: x
        """)
    code, _, err = cli("recipe", "validate", p)
    assert_one_line_error(code, err, 2, f"{p}:3: unknown key 'targts' (did you mean 'targets'?)")


@pytest.mark.parametrize("text, line, words", [
    ("version: 1\ndefaults:\n  rank: abc\n", 3, "defaults.rank must be a positive integer up to 10000000, got 'abc'"),
    ("version: 1\ndefaults:\n  rnk: 3\n", 3, "unknown key 'rnk' in defaults (did you mean 'rank'?)"),
    ("version: 1\ntargets:\n  - match: a\n  - match: '('\n", 4, "targets[1].match pattern '(' is not a valid regular expression"),
    ("version: 1\ntargets:\n  - rank: 3\n", 3, "targets[0] is missing the required key 'match'"),
    ("version: 1\ndefaults: {rank: 3, param_ratio: 0.2}\n", 2, "both given; give exactly one of them"),
    ("version: 1\nexclude: ['a', '(']\n", 2, "exclude[1] pattern '(' is not a valid regular expression"),
    ("version: 2\n", 1, "recipe version 2 is not supported"),
    ("model: x\n", 1, "missing the required key 'version'"),
    ("version: 1\ngates:\n  min_cosine: 2\n", 3, "gates.min_cosine must be a number in [-1, 1], got 2"),
    ("version: 1\ngates:\n  max_param_ratio: yes\n", 3, "gates.max_param_ratio must be"),
    ("version: 1\nfinetune: {device: tpu}\n", 2, "finetune.device must be one of auto, cpu, cuda"),
    ("version: 1\ndefaults: {param_ratio: 0.2, allocate: best}\n", 2, "defaults.allocate must be one of uniform, sensitivity"),
    ("version: 1\ndefaults: {rank: 4, sequential: maybe}\n", 2, "defaults.sequential must be true or false"),
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


@pytest.mark.parametrize("text, line, words", [
    ("defaults: {rank: 4}\ngates:\n  max_perplexity: 1" + "0" * 400, 4,
     "gates.max_perplexity must be a number in [1, inf), got 1000000000000000000000000000000000000..."),
    ("defaults: {rank: 4, omega: 1" + "0" * 400 + "}", 2, "defaults.omega must be 'auto' or a number"),
    ("defaults: {param_ratio: 1" + "0" * 400 + "}", 2, "defaults.param_ratio must be between 0 and 1"),
], ids=["gate", "omega", "param_ratio"])
def test_numbers_too_large_for_a_float_are_recipe_errors(text, line, words):
    test_recipe_errors_name_line_and_key("version: 1\n" + text + "\n", line, words)  # they were exit 4


def test_missing_or_unsafe_recipe_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match=r"nope.yaml: cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match=r"u.yaml:2: invalid YAML"):  # no python tags: safe loading only
        parse_recipe("version: 1\nmodel: !!python/name:os.system ''\n", "u.yaml")


def test_yaml_quirks_are_accepted():
    r = parse_recipe("version: 1\nfinetune: {lr: 1e-4, steps: 0}\nexclude: 'a.*'\ndefaults: {omega: 30, rank: 4}\n"
                     "gates: {max_rel_error: 5e-1, max_perplexity: 1E3}\n")  # YAML 1.1 reads these as strings
    assert r.gates == {"max_rel_error": 0.5, "max_perplexity": 1000.0}
    assert r.config.finetune.lr == 1e-4 and r.exclude == ("a.*",) and r.config.omega == 30.0
    assert r.config.finetune.steps == 0


def test_calibration_keys_reach_the_config():
    r = parse_recipe("version: 1\ndefaults: {rank: 4}\ncalibration:\n  source: calib.txt\n  samples: 64\n", "c.yaml")
    assert r.config.calibration.source == "calib.txt" and r.config.calibration.samples == 64
    assert r.settings == {"rank": 4, "calib": "calib.txt", "calib_samples": 64}
    with pytest.raises(UsageError, match=r"c.yaml:4: calibration.samples must be a positive integer"):
        parse_recipe("version: 1\ndefaults: {rank: 4}\ncalibration:\n  samples: 0\n", "c.yaml")


def test_cli_overrides_replace_recipe_values():
    r = parse_recipe("version: 1\ndefaults: {rank: 4, omega: 50}\ntargets:\n  - {match: a, rank: 9, omega: 7}\n"
                     "finetune: {seed: 3}\n")
    c = r.config
    assert c.rules == (Rule("a", None, 9, None, 7.0),) and c.seed == 3 and c.omega == 50.0
    c = override(r.config, param_ratio=0.2, omega=80.0, seed=1)
    assert c.rules == (Rule("a"),) and c.rank is None and c.param_ratio == 0.2
    assert c.omega == 80.0 and c.seed == 1
    assert override(r.config, targets=["b"]).rules == (Rule("b"),)
    assert c.allocate == "uniform"
    r = parse_recipe("version: 1\ndefaults: {param_ratio: 0.2, allocate: sensitivity}\n")
    assert r.config.allocate == "sensitivity"
    assert override(r.config, allocate="uniform").allocate == "uniform"
    assert r.config.fit.sequential is None
    assert parse_recipe("version: 1\ndefaults: {rank: 4, sequential: false}\n").config.fit.sequential is False


# --- plan, show, factorize ---------------------------------------------------------------------

def test_first_matching_rule_wins(tiny_bert_dir, tmp_path):
    _, plan, _ = recipe_plan(bert_recipe(tmp_path, tiny_bert_dir))
    got = {lp.name: (lp.rule, lp.method, lp.rank) for lp in plan.layers}
    assert got == {"encoder.layer.0.intermediate.dense": (0, "svd", 4),
                   "encoder.layer.0.output.dense": (1, "sine", 8),
                   "encoder.layer.1.intermediate.dense": (1, "sine", 8),
                   "encoder.layer.1.output.dense": (1, "sine", 8)}


def test_build_plan_rules(tiny_file):
    src = open_source(tiny_file)
    plain = build_plan(src, make_config(rank=4, targets=[r"blocks\.\d+\.fc1"]))
    assert [(lp.name, lp.rank, lp.rule) for lp in plain.layers] == [("blocks.0.fc1", 4, None),
                                                                   ("blocks.1.fc1", 4, None)]
    plan = build_plan(src, make_config(param_ratio=0.5, rules=[{"match": r"blocks\.0\..*", "method": "svd", "rank": 3},
                                                               {"match": r"blocks\.\d+\.fc2", "omega": 30.0}]))
    got = [(lp.name, lp.method, lp.rank, lp.omega, lp.rule) for lp in plan.layers]
    assert got[:3] == [("blocks.0.fc1", "svd", 3, None, 0), ("blocks.0.fc2", "svd", 3, None, 0),
                       ("blocks.1.fc2", "sine", got[2][2], 30.0, 1)]
    assert len(got) == 3 and got[2][2] > 0
    with pytest.raises(UsageError, match="needs a rank or param_ratio, in its rule or the defaults"):
        build_plan(src, make_config(rules=[{"match": r"blocks\.0\.fc1"}]))
    with pytest.raises(UsageError, match="--rank and --param-ratio both given; give exactly one of them"):
        make_config(rank=2, param_ratio=0.3)


def test_show_matches_what_factorize_compresses(tiny_bert_dir, tmp_path):
    p = bert_recipe(tmp_path, tiny_bert_dir, gates="{max_param_ratio: 0.9}")
    code, out, err = cli("recipe", "show", p, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert not (tmp_path / "out").exists()  # show compresses nothing
    code, out, err = cli("factorize", "--recipe", p, "--json")
    assert code == 0, err
    summary = json.loads(out)
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
    assert "effective plan" not in err and "gate max_param_ratio: PASS" in err  # the plan is `recipe show`'s job
    model = sinecompress.load(tmp_path / "out")  # mixed methods load: rule 0's svd layer, rule 1's sine layers
    inter = model.encoder.layer
    assert isinstance(inter[0].intermediate.dense, LowRankLinear)
    assert isinstance(inter[1].intermediate.dense, SineLowRankLinear)
    code, out, _ = cli("recipe", "show", p)  # the human listing
    assert code == 0 and "rule #0 'encoder\\.layer\\.0\\.intermediate\\.dense': 1 layer(s)" in out


def test_failing_gate_exits_1_and_writes_output(tmp_path, tiny_file):
    p = write(tmp_path, f"""
        version: 1
        model: {tiny_file}
        output: {tmp_path / 'o.safetensors'}
        defaults: {{rank: 4, fit_steps: 3}}
        targets: [{{match: 'blocks\\.\\d+\\.fc1'}}]
        gates: {{max_rel_error: 0.001, max_param_ratio: 0.99}}
        """)
    code, _, err = cli("factorize", "--recipe", p)
    assert code == 1, err
    assert (tmp_path / "o.safetensors").exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: gate failed: max_rel_error") and "o.safetensors" in last
    assert "max_param_ratio" not in last  # the passing gate is not named as failing
    assert "Traceback" not in err
    # the same recipe with flags overriding model, output and rank: gate still fails, output still written
    code, out, err = cli("factorize", "--recipe", p, tiny_file, "--out", tmp_path / "o2.safetensors",
                         "--rank", "2", "--json")
    assert code == 1 and (tmp_path / "o2.safetensors").exists() and "gate max_rel_error: FAIL" in err
    layers = json.loads(out)["layers"]  # --rank 2 replaced the recipe's rank 4
    assert [(x["rank"], x["linear_rank"]) for x in layers] == [(2, 1), (2, 1)]


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


def test_exclude_that_matches_nothing_names_its_line(tmp_path, tiny_file):
    p = write(tmp_path, f"""
        version: 1
        model: {tiny_file}
        defaults: {{rank: 4}}
        targets: [{{match: 'blocks\\.\\d+\\.fc1'}}]
        exclude:
          - 'blocks\\.0\\.fc1'
          - 'nothing'
        """)
    with pytest.raises(UsageError, match=r"r.yaml:7: --exclude 'nothing' matches none"):
        recipe_plan(p)


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
    a_dir, b_dir, c_dir = tmp_path / "a" / "out", tmp_path / "b" / "out", tmp_path / "c" / "out"  # one name: the card says it
    a = run_recipe(p, {"output": str(a_dir)})
    b = run_recipe(p, {"output": str(b_dir)})
    files = sorted(f.name for f in a_dir.iterdir())
    assert files == sorted(f.name for f in b_dir.iterdir()) and "model.safetensors" in files
    for name in files:
        assert (a_dir / name).read_bytes() == (b_dir / name).read_bytes(), name
    assert a["layers"] == b["layers"]
    c = run_recipe(p, {"output": str(c_dir), "seed": 1})
    assert (c_dir / "model.safetensors").read_bytes() != (a_dir / "model.safetensors").read_bytes()
    assert c["recipe"]["overrides"] == {"seed": 1}


def test_recipe_init_writes_a_valid_template(tmp_path):
    out = tmp_path / "new.yaml"
    code, _, err = cli("recipe", "init", "--out", out)
    assert code == 0, err
    assert out.read_text() == TEMPLATE and load_recipe(out).version == 1
    code, _, err = cli("recipe", "init", "--out", out)
    assert code == 2 and "already exists" in err
    code, stdout, _ = cli("recipe", "init")
    assert code == 0 and stdout == TEMPLATE


# --- every shipped recipe runs on a small random-weight model of its architecture -----------------

def run_shipped(name: str, model: Path, out: Path, must_pass: bool = True) -> dict:
    s = run_recipe(SHIPPED / name, {"model": str(model), "output": str(out), "fit_steps": 3})
    assert out.exists()
    assert [g["gate"] for g in s["gates"]] == [g for g in ("max_param_ratio", "max_rel_error", "min_cosine")
                                                if g in load_recipe(SHIPPED / name).gates]
    assert s["passed"] == all(g["passed"] for g in s["gates"])
    assert s["passed"] or not must_pass, s["gates"]  # a shipped recipe passes its own gates
    return s


def compressed(s: dict) -> list[str]:
    return [x["name"] for x in s["layers"] if not x["kept_dense"]]


def timm_file(tmp_path: Path, name: str, **kw):
    import timm

    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    p = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    return m, p


def test_shipped_minilm_recipe_on_tiny_bert(tmp_path):
    import transformers

    # MLPs wide enough that the recipe's rank 32 is below break-even (256*64/320 = 51)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=256, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(tmp_path / "bert"))
    # like the real all-MiniLM-L6-v2 checkpoint: it stores a buffer that is now non-persistent
    weights = tmp_path / "bert" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    save_file({**sd, "embeddings.position_ids": torch.arange(64)[None]}, str(weights), metadata={"format": "pt"})
    # rank 32 is 63 % of these tiny layers, so the size gate is for the real model (the next test)
    s = run_shipped("minilm.yaml", tmp_path / "bert", tmp_path / "bert-sine", must_pass=False)
    assert compressed(s) == [f"encoder.layer.{i}.{m}.dense" for i in range(2) for m in ("intermediate", "output")]
    cos = s["gates"][-1]
    assert cos["gate"] == "min_cosine" and -1 <= cos["value"] <= 1 and "random token ids" in cos["detail"]


def test_shipped_vit_recipe_on_tiny_vit(tmp_path):
    m, p = timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    s = run_shipped("vit.yaml", p, tmp_path / "vit-sine.safetensors")
    assert compressed(s) == [f"blocks.{i}.mlp.fc{j}" for i in range(2) for j in (1, 2)]
    assert all(x["params_after"] <= 0.3 * x["params_before"] for x in s["layers"])
    loaded = sinecompress.load(tmp_path / "vit-sine.safetensors", model=m)
    assert isinstance(loaded.blocks[0].mlp.fc1, SineLowRankLinear)
    assert loaded(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_shipped_convnext_recipe_on_tiny_convnext(tmp_path):
    _, p = timm_file(tmp_path, "convnext_tiny", depths=(1, 1, 1, 2), dims=(8, 16, 24, 32))
    s = run_shipped("convnext.yaml", p, tmp_path / "cn-sine.safetensors")
    assert compressed(s) == [f"stages.3.blocks.{i}.mlp.fc{j}" for i in range(2) for j in (1, 2)]


def test_convnext_recipe_on_conv_mlp_variant_says_why(tmp_path):
    _, p = timm_file(tmp_path, "convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    with pytest.raises(UsageError) as e:
        run_recipe(SHIPPED / "convnext.yaml", {"model": str(p), "output": str(tmp_path / "x.safetensors")})
    msg = str(e.value)
    assert "convnext.yaml:" in msg and "1x1 convolutions" in msg and "stages.3.blocks.0.mlp.fc1" in msg
    assert not (tmp_path / "x.safetensors").exists()


def test_shipped_llama_recipe_on_tiny_llama(tmp_path):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "llama"))
    out = tmp_path / "llama-sine"
    code, stdout, err = cli("factorize", "--recipe", SHIPPED / "llama.yaml", tmp_path / "llama",
                            "--out", out, "--fit-steps", "3", "--json")
    s = json.loads(stdout)
    assert code == (0 if s["passed"] else 1), err
    projs = [f"self_attn.{x}_proj" for x in "qkvo"] + [f"mlp.{x}_proj" for x in ("gate", "up", "down")]
    assert sorted(compressed(s)) == sorted(f"model.layers.{i}.{p}" for i in range(2) for p in projs)
    by_name = {x["name"]: x for x in s["layers"]}
    k = by_name["model.layers.0.self_attn.k_proj"]  # rule 0: param_ratio 0.6 on a 16x32 layer
    assert k["shape"] == [16, 32] and k["params_after"] <= 0.6 * 512 < (k["rank"] + 1) * 48 + 16
    assert [g["gate"] for g in s["gates"]] == ["max_param_ratio", "max_rel_error", "min_cosine"]
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


def test_docs_schema_names_every_recipe_key():
    """docs/recipes.md's schema block lists every setting a recipe can hold, and nothing else."""
    import re

    import yaml

    from sinecompress.config import SETTINGS
    from sinecompress.recipe.gates import GATES

    text = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    block = re.search(r"## Schema \(version 1\).*?```yaml\n(.*?)```", text, re.S).group(1)
    doc = yaml.safe_load(re.sub(r"^(\s*)# (\w+:)", r"\1\2", block, flags=re.M))  # commented keys count too

    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    documented = set(keys(doc)) - {"version", "model", "output"} - {f"gates.{g}" for g in GATES}
    assert documented == {s.recipe for s in SETTINGS if s.recipe}
    assert set(GATES) == set(re.findall(r"^\| `(\w+)` \|", text.split("## Gates")[1], re.M))


@pytest.mark.slow
def test_shipped_minilm_recipe_passes_its_gates_on_the_real_model(tmp_path):
    """As shipped, on the bundled all-MiniLM-L6-v2, with a tenth of the fit and fine-tune steps (CI time).
    The full recipe's own run is recorded in its comment (mean cosine 0.643 against the 0.55 gate)."""
    s = run_recipe(SHIPPED / "minilm.yaml", {"output": str(tmp_path / "out"), "fit_steps": 30,
                                             "finetune_steps": 20})
    assert s["passed"], s["gates"]
    assert s["finetune"]["mode"] == "global" and len(compressed(s)) == 12
