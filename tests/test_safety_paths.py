"""What is read: only regular files, never through a link out of the model directory (issue 13:
secrets copied out, hangs on FIFOs and devices, catastrophic regexes).

A hang would stall the suite, so each test here runs under ``deadline``: SIGALRM ends a stuck
in-process run, which then fails (exit 4) instead of hanging."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import save_file

from ._safety import FAST, model_dir, readable, refused, sc, sharded_dir, snapshot, tiny, tiny_bert, warned_ok

SECRET = "AWS_SECRET_ACCESS_KEY=hunter2"


class Stuck(BaseException):  # not an Exception: no handler in the run may take it for an error and go on
    pass


@pytest.fixture(autouse=True)
def deadline():
    """Fail, not hang: 60 s per test (a FIFO read or a backtracking regex would block forever)."""
    def stuck(signum, frame):
        raise Stuck("the run hung")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def secret(tmp_path):
    d = tmp_path / "private"
    d.mkdir()
    (d / "credentials").write_text(SECRET)
    return d / "credentials"


def _nothing_secret(out):
    for p in ([out] if out.is_file() else out.rglob("*")):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_side_file_linked_outside_is_not_copied(tmp_path, secret):
    d = model_dir(tmp_path)
    (d / "tokenizer_notes.txt").symlink_to(secret)
    (d / "extras").symlink_to(secret.parent, target_is_directory=True)
    (d / "inside.txt").write_text("fine")
    (d / "alias.txt").symlink_to(d / "inside.txt")  # a link that stays inside is followed
    out = tmp_path / "out"
    warnings = warned_ok(sc("factorize", d, "--out", out, *FAST))
    assert any("tokenizer_notes.txt" in w for w in warnings), warnings
    assert not (out / "tokenizer_notes.txt").exists() and not (out / "extras").exists()
    assert (out / "alias.txt").read_text() == "fine"
    _nothing_secret(out)
    dense = tmp_path / "dense"
    (out / "leak.txt").symlink_to(secret)
    warned_ok(sc("inflate", out, "--out", dense))
    _nothing_secret(dense)


@pytest.mark.parametrize("member", ["model-00001-of-00002.safetensors", "model.safetensors.index.json"])
def test_shard_or_index_linked_outside_is_refused(tmp_path, member):
    d = sharded_dir(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (d / member).rename(outside / member)
    (d / member).symlink_to(outside / member)
    out = tmp_path / "o"
    keep = snapshot(d, outside)
    refused(sc("factorize", d, "--out", out, *FAST), 3, member, "outside", keep=keep, clean=(tmp_path,),
            absent=(out,))


@pytest.mark.parametrize("member", ["config.json", "model.safetensors"])
def test_model_file_linked_outside_is_refused(tmp_path, secret, member):
    d = model_dir(tmp_path)
    (d / member).unlink()
    (d / member).symlink_to(secret)
    out = tmp_path / "o"
    refused(sc("factorize", d, "--out", out, *FAST), 3, member, clean=(tmp_path,), absent=(out,))


def test_fifo_as_the_input(tmp_path):
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    out = tmp_path / "o.safetensors"
    refused(sc("factorize", fifo, "--out", out, *FAST), 3, "FIFO", clean=(tmp_path,), absent=(out,))
    refused(sc("inflate", fifo, "--out", out), 3, "FIFO", clean=(tmp_path,), absent=(out,))
    refused(sc("report", fifo), 3, "FIFO")


def test_character_device_as_the_input(tmp_path):
    out = tmp_path / "o.safetensors"
    refused(sc("factorize", "/dev/zero", "--out", out, *FAST), 3, "/dev/zero", clean=(tmp_path,), absent=(out,))


@pytest.mark.parametrize("member", ["model-00002-of-00002.safetensors", "model.safetensors.index.json"])
def test_fifo_as_a_shard_or_the_index(tmp_path, member):
    d = sharded_dir(tmp_path)
    (d / member).unlink()
    os.mkfifo(d / member)
    out = tmp_path / "o"
    refused(sc("factorize", d, "--out", out, *FAST), 3, member, clean=(tmp_path,), absent=(out,))


def test_directory_named_like_a_shard(tmp_path):
    d = sharded_dir(tmp_path)
    shard = d / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.mkdir()
    out = tmp_path / "o"
    refused(sc("factorize", d, "--out", out, *FAST), 3, shard.name, clean=(tmp_path,), absent=(out,))


def test_fifo_as_config_or_side_file(tmp_path):
    d = model_dir(tmp_path)
    os.mkfifo(d / "notes.txt")  # a side file: left out with a warning, never read
    out = tmp_path / "o"
    warnings = warned_ok(sc("factorize", d, "--out", out, *FAST))
    assert any("notes.txt" in w for w in warnings)
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    refused(sc("factorize", d, "--out", tmp_path / "o2", *FAST), 3, "config.json", clean=(tmp_path,))


def test_fifo_as_calibration_file(tmp_path):
    d = tiny_bert(tmp_path)  # a model that calibrates, so the run gets as far as the calibration file
    fifo = tmp_path / "calib.txt"
    os.mkfifo(fifo)
    out = tmp_path / "o"
    refused(sc("factorize", d, "--out", out, "--calib", fifo, *FAST), 3, "calib.txt", clean=(tmp_path,),
            absent=(out,))


def test_fifo_as_recipe_or_adapter_files(tmp_path):
    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    refused(sc("recipe", "validate", fifo), 2, "r.yaml")
    refused(sc("factorize", "--recipe", fifo), 2, "r.yaml")
    src = tiny(tmp_path / "m.safetensors")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        a = tmp_path / f"adapter-{name}"
        a.mkdir()
        (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1}))
        save_file({"base_model.model.blocks.0.fc1.lora_A.weight": torch.zeros(1, 8),
                   "base_model.model.blocks.0.fc1.lora_B.weight": torch.zeros(16, 1)}, str(a / "adapter_model.safetensors"))
        (a / name).unlink()
        os.mkfifo(a / name)
        out = tmp_path / "merged.safetensors"
        refused(sc("adapter", "merge", src, a, "--out", out), 3, name, clean=(tmp_path,), absent=(out,))


NAME = "a" * 40  # (a+)+b against 40 a's backtracks 2^40 times in Python's re; `regex` still does on (a|aa)+b
EVIL = ["(a+)+b", "(a|aa)+b"]


@pytest.fixture
def aaa(tmp_path):
    return tiny(tmp_path / "m.safetensors", extra={f"{NAME}.weight": torch.randn(16, 8)})


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("flag", ["--target", "--exclude"])
def test_catastrophic_regex_flag(tmp_path, aaa, flag, evil):
    out = tmp_path / "o.safetensors"
    refused(sc("factorize", aaa, "--out", out, flag, evil, *FAST), 2, flag, evil, clean=(tmp_path,), absent=(out,))


@pytest.mark.parametrize("where", ["targets:\n  - {match: '%s'}", "exclude: ['%s']"])
def test_catastrophic_regex_in_a_recipe(tmp_path, aaa, where):
    out = tmp_path / "o.safetensors"
    recipe = tmp_path / "r.yaml"
    for evil in EVIL:
        recipe.write_text(f"version: 1\nmodel: {aaa}\noutput: {out}\ndefaults: {{method: svd, rank: 2}}\n"
                          + where % evil + "\n")
        refused(sc("factorize", "--recipe", recipe), 2, evil, clean=(tmp_path,), absent=(out,), after_plan=True)
        refused(sc("recipe", "show", recipe), 2, evil)


@pytest.mark.parametrize("evil", EVIL)
def test_catastrophic_regex_in_report_and_adapter_patterns(tmp_path, aaa, evil):
    refused(sc("report", aaa, "--layers", evil), 2, evil)
    a = tmp_path / "adapter"
    a.mkdir()
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1,
                                                       "alpha_pattern": {evil: 2}}))
    save_file({f"base_model.model.{NAME}.lora_A.weight": torch.zeros(1, 8),
               f"base_model.model.{NAME}.lora_B.weight": torch.zeros(16, 1)}, str(a / "adapter_model.safetensors"))
    out = tmp_path / "merged.safetensors"
    code, _, err = sc("adapter", "merge", aaa, a, "--out", out)
    if code == 0:  # the pattern was decided in time: it matches nothing, the default alpha applies
        assert readable(out)
    else:  # a pattern in a file is an input error naming the file
        refused((code, "", err), 3, evil, "adapter_config.json", clean=(tmp_path,), absent=(out,))


def test_a_link_inside_the_model_directory_still_works(tmp_path):
    d = model_dir(tmp_path)
    (d / "real.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to("real.safetensors")
    out = tmp_path / "o"
    warned_ok(sc("factorize", d, "--out", out, *FAST))
    assert readable(out)
