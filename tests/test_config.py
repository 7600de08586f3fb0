"""The one config of a factorize run: every setting round-trips, old names work, bad values name their flag."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sinecompress.config import (
    BY_KEY,
    SETTINGS,
    FactorizeConfig,
    Rule,
    make_config,
    override,
    parse_size,
    resolve_device,
)
from sinecompress.errors import SettingError, UsageError

from .helpers import assert_one_line_error, cli

# A valid value other than the default for every setting, and the settings it needs beside it.
VALUES = {
    "method": ("svd", {}),
    "rank": (7, {}),
    "param_ratio": (0.3, {"rank": None}),
    "omega": (30.0, {}),
    "targets": (("a", "b"), {}),
    "exclude": (("c",), {}),
    "rules": ((Rule("d", rank=2), Rule("e", method="svd", omega=50.0)), {}),
    "allocate": ("sensitivity", {"rank": None, "param_ratio": 0.2}),
    "seed": (9, {}),
    "device": ("cpu", {}),
    "fit_steps": (11, {}),
    "sequential": (True, {}),
    "fallback": (False, {}),
    "calibration": (False, {}),
    "calib": ("calib.txt", {}),
    "calib_samples": (12, {}),
    "seq_len": (13, {}),
    "calib_pack": (False, {}),
    "finetune_steps": (0, {}),
    "finetune": ("global", {}),
    "tune_target": ("model", {}),
    "tune_rows": (4, {}),
    "lr": (0.5, {}),
    "overwrite": (True, {}),
    "resume": (True, {}),
    "max_shard_size": ("2GB", {}),
    "workers": (3, {}),
    "allow_pickle": (True, {}),
}

# A bad value for every setting whose checks raise SettingError (rules have their own, below).
BAD = {
    "method": "lowrank", "rank": 0, "param_ratio": 1.0, "omega": -5, "targets": [""], "exclude": [""],
    "allocate": "best", "seed": -1, "device": "tpu", "fit_steps": 0, "sequential": "maybe", "fallback": "no",
    "calibration": "maybe", "calib": "", "calib_samples": 0, "seq_len": 0, "calib_pack": "maybe", "finetune_steps": -1, "finetune": "blockwise", "tune_target": "teacher", "tune_rows": 0,
    "lr": 0,
    "overwrite": "yes", "resume": 1, "max_shard_size": "lots", "workers": 0, "allow_pickle": "no",
}


def test_the_tables_cover_every_setting():
    assert set(VALUES) == set(BY_KEY) and set(BAD) | {"rules"} == set(BY_KEY)
    assert len(SETTINGS) == len(BY_KEY)  # one entry per flat name


def test_defaults_are_the_settings_table():
    c = make_config(rank=4)
    flat = c.to_flat()
    assert flat == {s.key: (4 if s.key == "rank" else s.default) for s in SETTINGS}
    # the CLI's defaults everywhere: ω chosen per layer, device picked, fine-tune steps by device
    assert c.omega == "auto" and c.device == "auto" and c.finetune.steps == "auto"
    assert c.finetune.steps_on("cpu") == 200 and c.finetune.steps_on("cuda") == 1000
    assert c.finetune.steps_on("cpu", "block") == 128 and c.finetune.steps_on("cuda", "block") == 200
    assert FactorizeConfig(rank=4) == c


def test_auto_calibration_samples_read_all_the_text_only_for_a_whole_model_tune_of_texts():
    from sinecompress.config import CALIB_SAMPLES, WHOLE_MODEL_TEXTS

    auto = make_config(rank=4).calibration
    assert auto.samples == "auto" and auto.rows_for(whole_model=True, per_text=True) == WHOLE_MODEL_TEXTS
    assert auto.rows_for(True, per_text=False) == auto.rows_for(False, True) == CALIB_SAMPLES == 256
    given = make_config(rank=4, calib_samples=64).calibration
    assert given.rows_for(True, True) == given.rows_for(False, False) == 64


def test_auto_lr_depends_on_the_tune_and_a_given_lr_on_nothing():
    auto = make_config(rank=4).finetune
    assert auto.lr == "auto" and auto.lr_for("global", causal_lm=True) == 1e-3
    assert auto.lr_for("global", causal_lm=False) == 1e-2
    assert auto.lr_for("block", causal_lm=True) == auto.lr_for("block", causal_lm=False) == 5e-3
    assert auto.lr_for("block", causal_lm=True, sine=False) == 1e-2  # whitened SVD tunes better at 0.01
    given = make_config(rank=4, lr="0.2").finetune  # a number given as text (YAML 1.1, the CLI) is read
    assert given.lr == 0.2 and given.lr_for("global", causal_lm=True) == given.lr_for("block", causal_lm=True) == 0.2
    assert given.lr_for("block", causal_lm=True, sine=False) == 0.2


@pytest.mark.parametrize("key", sorted(VALUES))
def test_every_setting_round_trips(key):
    value, extra = VALUES[key]
    c = make_config(**{"rank": 4, **extra, key: value})
    flat = c.to_flat()
    assert flat[key] == value, flat
    assert make_config(**flat) == c  # flat → config → flat loses nothing
    assert make_config(c) == c and make_config(c, **{key: value}) == c
    # the field the table names holds the value
    obj = c
    for part in BY_KEY[key].field.split("."):
        obj = getattr(obj, part)
    assert obj == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 1


def test_none_means_not_given():
    base = make_config(rank=4, seed=3, omega=30.0)
    assert make_config(base, seed=None, omega=None) == base


def test_older_keyword_names_still_work():
    c = make_config(rank=4, steps=5, ft_steps=2)
    assert c.fit.steps == 5 and c.finetune.steps == 2
    assert c == make_config(rank=4, fit_steps=5, finetune_steps=2)
    assert override(c, steps=9).fit.steps == 9 and override(c, ft_steps=0).finetune.steps == 0


def test_unknown_setting_is_a_usage_error_that_suggests_the_name():
    with pytest.raises(UsageError, match=r"unknown setting 'fit_step' \(did you mean 'fit_steps'\?\)"):
        make_config(rank=4, fit_step=3)


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_values_name_the_setting_and_its_flag(key):
    extra = {"rank": None, "param_ratio": 0.3} if key == "allocate" else {"rank": 4}
    with pytest.raises(SettingError) as e:
        make_config(**{**extra, key: BAD[key]})
    assert e.value.key == key
    flag = BY_KEY[key].cli.split("/")[0]
    assert str(e.value).startswith(f"{flag} ") and e.value.problem in str(e.value)
    assert "\n" not in str(e.value)


def test_rules_are_checked_too():
    with pytest.raises(UsageError, match="rule 'a': rank must be a positive integer"):
        make_config(rules=[{"match": "a", "rank": 0}])
    with pytest.raises(UsageError, match="has both rank and param_ratio"):
        make_config(rules=[{"match": "a", "rank": 2, "param_ratio": 0.5}])
    with pytest.raises(UsageError, match="method 'lowrank' is unknown"):
        make_config(rank=4, rules=[{"match": "a", "method": "lowrank"}])


def test_size_is_required_once():
    with pytest.raises(SettingError, match="--rank is missing"):
        make_config()
    with pytest.raises(SettingError, match="give exactly one of them"):
        make_config(rank=2, param_ratio=0.3)
    with pytest.raises(SettingError, match="--allocate sensitivity spreads a --param-ratio budget"):
        make_config(rank=2, allocate="sensitivity")
    assert make_config(rules=[Rule("a", rank=2)]).rank is None  # rules alone may size every layer


def test_override_applies_a_size_omega_or_method_to_every_rule():
    base = make_config(rank=4, omega=50.0, rules=[Rule("a", rank=9, omega=7.0, method="svd"), Rule("b")])
    c = override(base, param_ratio=0.2, omega=80.0, method="sine")
    assert c.rank is None and c.param_ratio == 0.2 and c.omega == 80.0
    assert c.rules == (Rule("a"), Rule("b"))
    assert override(base, targets=["x"]).rules == (Rule("x"),)
    assert override(base, seed=5).rules == base.rules  # other settings leave the rules alone


def test_parse_size_and_resolve_device():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1GiB") == 2**30 and parse_size(4096) == 4096
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")


@pytest.mark.parametrize("args, flag", [
    (["--rank", "0"], "--rank"),
    (["--rank", "4", "--fit-steps", "0"], "--fit-steps"),
    (["--rank", "4", "--steps", "-1"], "--steps"),
    (["--rank", "4", "--steps", "many"], "--steps"),
    (["--rank", "4", "--lr", "0"], "--lr"),
    (["--rank", "4", "--lr", "nan"], "--lr"),
    (["--rank", "4", "--calib-samples", "0"], "--calib-samples"),
    (["--rank", "4", "--calib-samples", "all"], "--calib-samples"),
    (["--rank", "4", "--seq-len", "0"], "--seq-len"),
    (["--rank", "4", "--workers", "0"], "--workers"),
    (["--rank", "4", "--seed", "-1"], "--seed"),
    (["--rank", "4", "--device", "tpu"], "--device"),
    (["--rank", "4", "--method", "lowrank"], "--method"),
    (["--param-ratio", "0.3", "--allocate", "best"], "--allocate"),
    (["--param-ratio", "1.5"], "--param-ratio"),
    (["--rank", "4", "--omega", "0"], "--omega"),
    (["--rank", "4", "--max-shard-size", "0"], "--max-shard-size"),
    (["--rank", "4", "--param-ratio", "0.3"], "--rank"),
])
def test_cli_bad_values_are_one_line_errors_naming_the_flag(tiny_file, tmp_path, args, flag):
    code, out, err = cli("factorize", tiny_file, *args, "--out", tmp_path / "o.safetensors")
    line = assert_one_line_error(code, err, 2, flag)
    assert line.startswith(f"error: {flag} ") and out == ""
    assert not (tmp_path / "o.safetensors").exists()


def test_readme_states_the_step_defaults_the_config_has():
    """The README's `--steps` line went stale once (it said 32 per block after the default became 128)."""
    from sinecompress.config import BLOCK_STEPS, FINETUNE_STEPS, TUNE_ROWS

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert (f"`auto`: {FINETUNE_STEPS['cpu']} on CPU and {FINETUNE_STEPS['cuda']} on CUDA for global; "
            f"{BLOCK_STEPS['cpu']} and {BLOCK_STEPS['cuda']} per block for block, each of `--tune-rows` {TUNE_ROWS} "
            "calibration rows") in readme
