"""Bad settings, recipes, config.json, calibration data and adapters (issue 13): each is one line with
its documented exit code, naming the setting or file, before any fitting, with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ._safety import FAST, model_dir, readable, refused, sc, snapshot, tiny, tiny_bert

# ---------------------------------------------------------------------------------------------- settings

SETTINGS = [
    (["--seed", str(2**70)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--max-shard-size", "1e400GB"], "--max-shard-size"),
    (["--max-shard-size", "0"], "--max-shard-size"),
    (["--max-shard-size", "-1GB"], "--max-shard-size"),
    (["--max-shard-size", "nanGB"], "--max-shard-size"),
    (["--seq-len", "-1"], "--seq-len"),
    (["--seq-len", "0"], "--seq-len"),
    (["--calib-samples", "-1"], "--calib-samples"),
    (["--calib-samples", "0"], "--calib-samples"),
    (["--rank", str(2**70)], "--rank"),
    (["--rank", "0"], "--rank"),
    (["--param-ratio", "1e-400"], "--param-ratio"),
    (["--param-ratio", "nan"], "--param-ratio"),
    (["--omega", "1e308"], "--omega"),
    (["--omega", "5e-324"], "--omega"),
    (["--omega", "nan"], "--omega"),
    (["--omega", "-inf"], "--omega"),
    (["--fit-steps", "0"], "--fit-steps"),
    (["--fit-steps", str(10**12)], "--fit-steps"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--workers", "0"], "--workers"),
    (["--workers", "100000"], "--workers"),
    (["--steps", "-1"], "--steps"),
    (["--steps", "abc"], "--steps"),
    (["--device", "tpu"], "--device"),
    (["--method", "magic"], "--method"),
    (["--allocate", "sensitivity"], "--allocate"),
]


@pytest.mark.parametrize("args,flag", SETTINGS, ids=[" ".join(a) for a, _ in SETTINGS])
def test_bad_setting_is_one_line_exit_2(tmp_path, args, flag):
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    base = ["--rank", "2"] if "--rank" not in args and "--param-ratio" not in args else []
    if "--allocate" in args:
        base = ["--rank", "2"]
    refused(sc("factorize", src, "--out", out, *base, *args), 2, flag, keep=snapshot(src), clean=(tmp_path,),
            absent=(out,))


@pytest.mark.parametrize("args,flag", [
    (["--shape", "100000x100000"], "--shape"), (["--shape", "0x5"], "--shape"), (["--shape", "axb"], "--shape"),
    (["--omegas", "1e308"], "--omegas"), (["--omegas", "nan"], "--omegas"), (["--omegas", ","], "--omegas"),
    (["--rank", "0"], "--rank")])
def test_bad_spectrum_setting(args, flag):
    full = {"--shape": "64x64", "--rank": "4", "--omegas": "1,10"}
    for i in range(0, len(args), 2):
        full[args[i]] = args[i + 1]
    refused(sc("spectrum", *[x for kv in full.items() for x in kv]), 2, flag)


def test_convert_rank_past_break_even(tmp_path):
    out = tmp_path / "init.safetensors"
    refused(sc("convert", "timm:vit_tiny_patch16_224", "--out", out, "--rank", "1000000", "--omega", "30",
               "--target", r"blocks\.\d+\.mlp\.fc1"), 2, "rank 1000000", clean=(tmp_path,), absent=(out,))


def test_report_bad_settings(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    refused(sc("report", src, "--rank", "0"), 2, "--rank")
    refused(sc("report", src, "--rank", "a,b"), 2, "--rank")
    refused(sc("report", src, "--rtol", "nan"), 2, "--rtol")
    refused(sc("report", src, "--top", "0"), 2, "--top")


def test_unknown_flag_or_missing_value_is_one_line():
    refused(sc("factorize", "--no-such-flag"), 2, "--no-such-flag")
    refused(sc("factorize", "x", "--rank"), 2, "--rank")
    refused(sc("inflate"), 2)


# ----------------------------------------------------------------------------------------------- recipes

RECIPES = [
    ("int-abc", "defaults: {rank: !!int abc}", 2),
    ("float-abc", "defaults: {rank: 2, omega: !!float abc}", 2),
    ("bool-maybe", "defaults: {rank: 2}\ncalibration: {enabled: !!bool maybe}", 3),
    ("timestamp-x", "defaults: {rank: 2}\nseed: !!timestamp x", 3),
    ("int-0x", "defaults: {rank: !!int 0x}", 2),
    ("python-object", "defaults: {rank: !!python/object:os.system echo}", 2),
    ("huge-int", "defaults: {rank: 1" + "0" * 5000 + "}", 2),
    ("nan-lr", "defaults: {rank: 2}\nfinetune: {lr: .nan}", 3),
    ("deep-list", "defaults: {rank: 2}\nexclude: " + "[" * 20000 + "]" * 20000, 3),
    ("deep-map", "defaults: {rank: 2}\nexclude: " + "{a: " * 20000 + "1" + "}" * 20000, 3),
    ("control-char", "defaults: {rank: 2}\nseed: 1\x07", 3),
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nexclude: [*c, *c, *c, *c, *c, *c, *c, *c, *c]", 1),
    ("tab-indent", "defaults:\n\trank: 2", 2),
    ("duplicate-key", "defaults: {rank: 2, rank: 3}", 2),
    ("list-not-map", "- 1\n- 2", 1),
]


@pytest.mark.parametrize("text,line", [(t, ln) for _, t, ln in RECIPES], ids=[i for i, _, _ in RECIPES])
def test_bad_recipe_is_one_line_with_its_line(tmp_path, text, line):
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    recipe = tmp_path / "r.yaml"
    head = "" if text.startswith("- ") else f"version: 1\nmodel: {src}\noutput: {out}\n"
    recipe.write_text(head + text + "\n")
    for args in (("recipe", "validate", recipe), ("factorize", "--recipe", recipe), ("recipe", "show", recipe)):
        refused(sc(*args), 2, "r.yaml:", keep=snapshot(src), clean=(tmp_path,), absent=(out,))


def test_recipe_settings_a_bare_model_cannot_use(tmp_path):
    """calibration.source (even a missing file) and finetune.steps need a model directory: exit 2, not
    silently ignored."""
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    for extra, needle in (("calibration: {source: missing.txt}", "calib"), ("finetune: {steps: 5}", "steps")):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"version: 1\nmodel: {src}\noutput: {out}\ndefaults: {{method: svd, rank: 2}}\n{extra}\n")
        refused(sc("factorize", "--recipe", recipe), 2, needle, clean=(tmp_path,), absent=(out,), after_plan=True)


# ------------------------------------------------------------------------------------------- config.json

CONFIGS = {
    "invalid-json": b"{hidden_size: 8",
    "not-utf8": b'{"hidden_size": "\xff\xfe"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "a-list": b'[{"hidden_size": 8}]',
    "empty": b"",
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_config_json_is_exit_3_before_fitting(tmp_path, name):
    d = model_dir(tmp_path)
    (d / "config.json").write_bytes(CONFIGS[name])
    keep = snapshot(d)
    out = tmp_path / "o"
    line = refused(sc("factorize", d, "--out", out, *FAST), 3, "config.json", keep=keep, clean=(tmp_path,),
                   absent=(out,))
    assert "fitting" not in line


@pytest.mark.parametrize("name", ["invalid-json", "a-list", "deep"])
def test_bad_config_json_of_a_compressed_or_base_directory(tmp_path, name):
    d = model_dir(tmp_path)
    c = tmp_path / "c"
    assert sc("factorize", d, "--out", c, *FAST)[0] == 0
    (c / "config.json").write_bytes(CONFIGS[name])
    out = tmp_path / "dense"
    refused(sc("inflate", c, "--out", out), 3, "config.json", clean=(tmp_path,), absent=(out,))
    (d / "config.json").write_bytes(CONFIGS[name])
    adapter = _adapter(tmp_path / "adapter", {})
    refused(sc("adapter", "merge", d, adapter, "--out", out), 3, "config.json", clean=(tmp_path,), absent=(out,))


# ------------------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


def _calib_tensors(path, **tensors):
    save_file(tensors, str(path))
    return path


CALIB = {
    "deep.jsonl": lambda p: p.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
    "nontext.jsonl": lambda p: p.write_text('{"text": 5}\n'),
    "notjson.jsonl": lambda p: p.write_text("hello\n"),
    "empty.txt": lambda p: p.write_text("\n\n"),
    "latin1.txt": lambda p: p.write_bytes(b"caf\xe9\n"),
    "vocab.safetensors": lambda p: _calib_tensors(p, input_ids=torch.full((2, 4), 10**6)),
    "negative.safetensors": lambda p: _calib_tensors(p, input_ids=torch.full((2, 4), -1)),
    "scalar.safetensors": lambda p: _calib_tensors(p, input_ids=torch.tensor(5)),
    "ragged.safetensors": lambda p: _calib_tensors(p, input_ids=torch.zeros(2, 4, dtype=torch.long),
                                                   attention_mask=torch.ones(3, 4, dtype=torch.long)),
    "nothing.safetensors": lambda p: _calib_tensors(p),
}


@pytest.mark.parametrize("name", list(CALIB))
def test_bad_calibration_file_is_exit_3_naming_it(tmp_path, bert, name):
    calib = tmp_path / name
    CALIB[name](calib)
    out = tmp_path / "o"
    keep = snapshot(bert)
    refused(sc("factorize", bert, "--out", out, "--rank", "2", "--calib", calib, "--steps", "0", "--fit-steps", "2"),
            3, name, keep=keep, clean=(tmp_path,), absent=(out,))


def test_missing_calibration_file_for_a_bare_checkpoint(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    refused(sc("factorize", src, "--out", out, "--rank", "2", "--calib", tmp_path / "missing.txt"), 2, "--calib",
            clean=(tmp_path,), absent=(out,))


@pytest.mark.parametrize("flags", [("--resume",), ("--workers", "2")])
def test_weight_only_flags_with_calibration_refused_before_calibrating(tmp_path, bert, flags):
    out = tmp_path / "o"
    line = refused(sc("factorize", bert, "--out", out, "--rank", "2", *flags), 2, clean=(tmp_path,), absent=(out,))
    assert "--no-calib" in line and (flags[0] in line or "multi-process" in line), line


# ---------------------------------------------------------------------------------------------- adapters


def _adapter(d, config: dict, tensors: dict | None = None):
    d.mkdir(exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 1, "lora_alpha": 1, **config}
    (d / "adapter_config.json").write_text(json.dumps(cfg, allow_nan=True))
    g = torch.Generator().manual_seed(0)
    save_file(tensors or {"base_model.model.blocks.0.fc1.lora_A.weight": torch.randn(1, 8, generator=g),
                          "base_model.model.blocks.0.fc1.lora_B.weight": torch.randn(16, 1, generator=g)},
              str(d / "adapter_model.safetensors"))
    return d


ADAPTERS = {
    "alpha-string": {"lora_alpha": "eight"},
    "alpha-1e400": {"lora_alpha": float("inf")},
    "alpha-nan": {"lora_alpha": float("nan")},
    "alpha-null": {"lora_alpha": None},
    "alpha-bool": {"lora_alpha": True},
    "alpha-pattern-list": {"alpha_pattern": [1, 2]},
    "alpha-pattern-bad-regex": {"alpha_pattern": {"(": 2}},
    "alpha-pattern-string-value": {"alpha_pattern": {"blocks.0.fc1": "two"}},
    "omega-string": {"peft_type": "SINE_LORA", "sinecompress": {"kind": "sine_lora", "omega": "high"}},
    "omega-zero": {"peft_type": "SINE_LORA", "sinecompress": {"kind": "sine_lora", "omega": 0}},
    "omega-pattern-nan": {"peft_type": "SINE_LORA", "sinecompress": {"kind": "sine_lora", "omega": 1,
                                                                     "omega_pattern": {"blocks.0.fc1": float("nan")}}},
    "sine-kind-missing": {"peft_type": "SINE_LORA", "sinecompress": {"omega": 1}},
    "sinecompress-list": {"peft_type": "SINE_LORA", "sinecompress": [1]},
    "peft-type-unknown": {"peft_type": "IA3"},
    "rslora": {"use_rslora": True},
}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_bad_adapter_config_is_exit_3(tmp_path, name):
    src = tiny(tmp_path / "m.safetensors")
    a = _adapter(tmp_path / "adapter", ADAPTERS[name])
    out = tmp_path / "merged.safetensors"
    refused(sc("adapter", "merge", src, a, "--out", out), 3, "adapter_config.json", keep=snapshot(src, a),
            clean=(tmp_path,), absent=(out,))


@pytest.mark.parametrize("name,tensors", [  # config {} but for the DoRA case
    ("rank-0", {"base_model.model.blocks.0.fc1.lora_A.weight": torch.zeros(0, 8),
                "base_model.model.blocks.0.fc1.lora_B.weight": torch.zeros(16, 0)}),
    ("nan-weights", {"base_model.model.blocks.0.fc1.lora_A.weight": torch.full((1, 8), float("nan")),
                     "base_model.model.blocks.0.fc1.lora_B.weight": torch.zeros(16, 1)}),
    ("wrong-shape", {"base_model.model.blocks.0.fc1.lora_A.weight": torch.zeros(1, 9),
                     "base_model.model.blocks.0.fc1.lora_B.weight": torch.zeros(16, 1)}),
    ("1-d", {"base_model.model.blocks.0.fc1.lora_A.weight": torch.zeros(8),
             "base_model.model.blocks.0.fc1.lora_B.weight": torch.zeros(16, 1)}),
    ("unknown-module", {"base_model.model.nowhere.lora_A.weight": torch.zeros(1, 8),
                        "base_model.model.nowhere.lora_B.weight": torch.zeros(16, 1)}),
    ("dora-without-magnitude", {"base_model.model.blocks.0.fc1.lora_A.weight": torch.zeros(1, 8),
                                "base_model.model.blocks.0.fc1.lora_B.weight": torch.zeros(16, 1),
                                "base_model.model.blocks.0.fc1.lora_magnitude_vector": torch.zeros(3)}),
])
def test_bad_adapter_weights_are_exit_3(tmp_path, name, tensors):
    src = tiny(tmp_path / "m.safetensors")
    a = _adapter(tmp_path / "adapter", {"use_dora": name.startswith("dora")}, tensors)
    out = tmp_path / "merged.safetensors"
    refused(sc("adapter", "merge", src, a, "--out", out), 3, clean=(tmp_path,), absent=(out,))


def test_adapter_r_zero_and_config_directory(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "merged.safetensors"
    a = _adapter(tmp_path / "adapter", {"r": 0})
    code, _, err = sc("adapter", "merge", src, a, "--out", out)  # r in the config is peft's default; tensors rule
    if code:
        refused((code, "", err), 3, "adapter", clean=(tmp_path,), absent=(out,))
    (a / "adapter_config.json").unlink()
    (a / "adapter_config.json").mkdir()
    refused(sc("adapter", "merge", src, a, "--out", out), 3, "adapter_config.json", clean=(tmp_path,))


def test_adapter_merge_that_overflows_writes_nothing(tmp_path):
    """Finite settings whose product overflows float32: the merged weight is checked before it is written."""
    src = tiny(tmp_path / "m.safetensors")
    a = _adapter(tmp_path / "adapter", {"lora_alpha": 1e38},
                 {"base_model.model.blocks.0.fc1.lora_A.weight": torch.full((1, 8), 1e30),
                  "base_model.model.blocks.0.fc1.lora_B.weight": torch.full((16, 1), 1e30)})
    out = tmp_path / "merged.safetensors"
    refused(sc("adapter", "merge", src, a, "--out", out), 3, "non-finite", clean=(tmp_path,), absent=(out,))
    good = _adapter(tmp_path / "good", {"lora_alpha": 2})
    assert sc("adapter", "merge", src, good, "--out", out)[0] == 0
    readable(out)


class _TooSlow(BaseException):  # not an Exception: no handler on the way may turn it into an exit code
    pass


def test_config_json_far_bigger_than_its_weights_is_refused_at_once(tmp_path, bert):
    import signal

    d = tmp_path / "liar"
    shutil.copytree(bert, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 10**6}))

    def too_slow(signum, frame):
        raise _TooSlow

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(30)
    try:
        result = sc("factorize", d, "--out", tmp_path / "o", "--rank", "2", "--steps", "0", "--fit-steps", "2")
    except _TooSlow:
        pytest.fail("still building the model from config.json after 30 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    refused(result, 3, "config.json", clean=(tmp_path,))
