"""`factorize --recipe` honours every flag given beside it, and the recipe's device reaches the whole run.

Each run here is real (the CLI in-process, real fits and outputs); a spy on the ``factorize`` that
``recipe.run`` calls only records the config object it receives, to name which setting a flag reached.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors import safe_open

from sinecompress.config import BY_KEY, Rule
from sinecompress.io.format import META_KEY
from sinecompress.pipeline import factorize as factorize_module
from sinecompress.recipe import run as recipe_run
from sinecompress.recipe.schema import load_recipe

from .helpers import assert_one_line_error, cli, tiny_llama

MLP = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"


@pytest.fixture
def seen(monkeypatch):
    """The configs ``factorize`` received from recipe runs, in order (the real factorize still runs)."""
    configs = []
    real = recipe_run.factorize

    def spy(source, out, config=None, /, **kw):
        configs.append(config)
        return real(source, out, config, **kw)

    monkeypatch.setattr(recipe_run, "factorize", spy)
    return configs


def write(path, text):
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def weight_only_recipe(tmp_path, model):
    return write(tmp_path / "w.yaml", f"""
        version: 1
        model: {model}
        output: {tmp_path / 'o'}
        defaults: {{method: svd, rank: 4, omega: 100, fit_steps: 3}}
        targets:
          - match: 'blocks\\.\\d+\\.fc1'
        seed: 0
        device: auto
        workers: 1
        max_shard_size: 4KB
        """)


# flag(s) given with --recipe → the value the run's config must then hold (flat setting names)
WEIGHT_ONLY_FLAGS = {
    "method": (["--method", "sine"], "sine"),
    "rank": (["--rank", "3"], 3),
    "omega": (["--omega", "30"], 30.0),
    "rules": (["--target", r"blocks\.\d+\.fc[12]"], (Rule(r"blocks\.\d+\.fc[12]"),)),
    "exclude": (["--exclude", r"blocks\.1\.fc2"], (r"blocks\.1\.fc2",)),
    "seed": (["--seed", "5"], 5),
    "device": (["--device", "cpu"], "cpu"),
    "fit_steps": (["--fit-steps", "7"], 7),
    "calibration": (["--no-calib"], False),
    "finetune_steps": (["--steps", "0"], 0),
    "lr": (["--lr", "0.05"], 0.05),
    "overwrite": (["--overwrite"], True),
    "resume": (["--resume"], True),
    "max_shard_size": (["--max-shard-size", "8KB"], "8KB"),
    "workers": (["--workers", "2"], 2),
    "allow_pickle": (["--allow-pickle"], True),
}
CALIBRATED_FLAGS = {
    "calib": (["--calib", "{calib}"], "{calib}"),
    "calib_samples": (["--calib-samples", "8"], 8),
    "seq_len": (["--seq-len", "16"], 16),
    "calib_pack": (["--calib-pack"], True),
    "finetune_steps": (["--steps", "2"], 2),
    "lr": (["--lr", "0.05"], 0.05),
    "finetune": (["--finetune", "global"], "global"),  # the whole-model fine-tune, where --sequential applies
    "sequential": (["--sequential"], True),
    "fallback": (["--no-fallback"], False),
    "device": (["--device", "cpu"], "cpu"),
}
BLOCK_TUNE_FLAGS = {  # apply to block tuning only (refused with --finetune global): a causal LM's run
    "tune_target": (["--tune-target", "model"], "model"),
    "tune_rows": (["--tune-rows", "3"], 3),
}
BUDGET_FLAGS = {
    "param_ratio": (["--param-ratio", "0.3"], 0.3),
    "allocate": (["--allocate", "sensitivity"], "sensitivity"),
}


def test_the_flag_tables_cover_every_setting():
    covered = set(WEIGHT_ONLY_FLAGS) | set(CALIBRATED_FLAGS) | set(BLOCK_TUNE_FLAGS) | set(BUDGET_FLAGS)
    # with --recipe, --target replaces the recipe's rules (override()): it is checked as "rules"
    assert covered | {"targets"} == set(BY_KEY)


def _flags(table, **fmt):
    args, want = [], {}
    for key, (flag, value) in table.items():
        args += [a.format(**fmt) for a in flag]
        want[key] = value.format(**fmt) if isinstance(value, str) else value
    return args, want


def test_every_weight_only_flag_reaches_the_run(tmp_path, tiny_file, seen):
    p = weight_only_recipe(tmp_path, tiny_file)
    code, _, err = cli("factorize", "--recipe", p)  # the recipe alone: its own values, which every flag changes
    assert code == 0, err
    args, want = _flags(WEIGHT_ONLY_FLAGS)
    code, out, err = cli("factorize", "--recipe", p, *args, "--json")
    assert code == 0, err
    before, after = seen[0].to_flat(), seen[1].to_flat()
    for key, value in want.items():
        assert after[key] == value, key
        assert before[key] != value, f"{key}: the recipe already had {value!r}; the test proves nothing"
    # ... and the run did what they say
    s = json.loads(out)
    layers = {x["name"]: x for x in s["layers"]}
    assert sorted(layers) == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1"]  # --target, --exclude
    assert all(x["method"] == "sine" and x["rank"] == 3 and x["omega"] == 30.0 for x in layers.values())
    assert s["calibration"]["used"] is False and s["finetune"] is None
    out_dir = tmp_path / "o"
    shards = sorted(q.name for q in out_dir.glob("*.safetensors"))
    assert len(shards) >= 2 and (out_dir / "model.safetensors.index.json").exists()  # --max-shard-size 8KB
    with safe_open(str(out_dir / shards[0]), "pt") as f:
        doc = json.loads(f.metadata()[META_KEY])
    assert doc["plan"]["seed"] == 5 and doc["plan"]["steps"] == 7
    applied = doc["recipe"]["overrides"]
    assert applied["workers"] == 2 and applied["resume"] is True and applied["lr"] == 0.05


def test_every_calibration_flag_reaches_the_run(tmp_path, tiny_bert_dir, seen):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(f"sentence number {i} about sine waves and low rank" for i in range(40)))
    p = write(tmp_path / "c.yaml", f"""
        version: 1
        model: {tiny_bert_dir}
        output: {tmp_path / 'o'}
        defaults: {{method: sine, rank: 4, omega: 100, fit_steps: 3, sequential: false}}
        targets:
          - match: '{MLP}'
        calibration: {{samples: 16, seq_len: 32}}
        finetune: {{steps: 0, lr: 0.01}}
        device: auto
        """)
    before = load_recipe(p).config.to_flat()
    args, want = _flags(CALIBRATED_FLAGS, calib=str(calib))
    code, out, err = cli("factorize", "--recipe", p, *args, "--json")
    assert code == 0, err
    after = seen[0].to_flat()
    for key, value in want.items():
        assert after[key] == value and before[key] != value, key
    s = json.loads(out)
    assert s["calibration"]["used"] and s["calibration"]["samples"] == 8
    assert s["calibration"]["data"].startswith("calib.txt (40 texts packed into 8 rows of 16 tokens)")
    assert s["finetune"]["steps"] == 2 and s["finetune"]["device"] == "cpu"
    assert s["sequential"] is True  # asked for, although a fine-tune runs (where it is off by default)


def test_block_tuning_flags_reach_the_run(tmp_path, seen):
    p = write(tmp_path / "b.yaml", f"""
        version: 1
        model: {tiny_llama(tmp_path / 'llama')}
        output: {tmp_path / 'o'}
        defaults: {{method: wsvd, rank: 4}}
        calibration: {{samples: 4, seq_len: 16}}
        finetune: {{mode: block, steps: 1}}
        """)
    before = load_recipe(p).config.to_flat()
    args, want = _flags(BLOCK_TUNE_FLAGS)
    code, out, err = cli("factorize", "--recipe", p, *args, "--json")
    assert code == 0, err
    after = seen[0].to_flat()
    for key, value in want.items():
        assert after[key] == value and before[key] != value, key
    assert json.loads(out)["finetune"]["target"] == "model" and json.loads(out)["finetune"]["rows"] == 3


def test_budget_flags_reach_the_run(tmp_path, tiny_file, seen):
    p = weight_only_recipe(tmp_path, tiny_file)
    args, want = _flags(BUDGET_FLAGS)
    code, out, err = cli("factorize", "--recipe", p, *args, "--json")
    assert code == 0, err
    after = seen[0].to_flat()
    assert {k: after[k] for k in want} == want and after["rank"] is None
    s = json.loads(out)
    assert s["allocation"]["mode"] == "sensitivity" and s["params_after"] <= s["allocation"]["budget"]


@pytest.mark.parametrize("lines", [["device: cuda", "finetune: {steps: 0}"], ["finetune: {device: cuda, steps: 0}"]])
def test_recipe_device_is_read_even_without_a_fine_tune(tmp_path, tiny_bert_dir, lines):
    """The device drives calibration and the fits too, not only the fine-tune: with no fine-tune at all it
    must still be read (here, on a machine without CUDA, it must fail as --device cuda does). The second
    form is the older recipe key, still accepted."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA; test_recipe_device_reaches_calibration_and_fits covers GPUs")
    p = write(tmp_path / "d.yaml", f"""
        version: 1
        model: {tiny_bert_dir}
        output: {tmp_path / 'o'}
        defaults: {{method: sine, rank: 4, omega: 100, fit_steps: 3}}
        targets:
          - match: '{MLP}'
        calibration: {{samples: 8, seq_len: 16}}
        """)
    p.write_text(p.read_text() + "\n".join(lines) + "\n")
    assert load_recipe(p).config.device == "cuda" and load_recipe(p).config.finetune.steps == 0
    code, _, err = cli("factorize", "--recipe", p)
    line = assert_one_line_error(code, err, 2, after_plan=True)  # a recipe run prints its effective plan first
    assert line.startswith(f"error: {p}: --device cuda: no CUDA device is available"), line
    assert not (tmp_path / "o").exists()
    code, _, err = cli("factorize", "--recipe", p, "--device", "cpu", "--fit-steps", "2")  # the flag wins
    assert code == 0, err


@pytest.mark.gpu
def test_recipe_device_reaches_calibration_and_fits(tmp_path, tiny_bert_dir, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    devices = {}
    for stage in ("calibrate", "fit_sequential", "fit_layers"):
        real = getattr(factorize_module, stage)

        def spy(*a, _real=real, _stage=stage, **k):  # records the device argument; the stage runs
            devices[_stage] = k.get("device", a[-1] if isinstance(a[-1], str) else None)
            return _real(*a, **k)

        monkeypatch.setattr(factorize_module, stage, spy)
    p = write(tmp_path / "g.yaml", f"""
        version: 1
        model: {tiny_bert_dir}
        output: {tmp_path / 'o'}
        defaults: {{method: sine, rank: 4, omega: 100, fit_steps: 3}}
        targets:
          - match: '{MLP}'
        finetune: {{steps: 0, device: cuda}}
        calibration: {{samples: 8, seq_len: 16}}
        """)
    code, out, err = cli("factorize", "--recipe", p, "--json")
    assert code == 0, err
    assert devices["calibrate"] == "cuda" and devices["fit_sequential"] == "cuda", devices
    assert json.loads(out)["calibration"]["used"]
