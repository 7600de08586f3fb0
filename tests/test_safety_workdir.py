"""What ``--resume`` reuses is checked, not trusted (issue 13: tampered work files; a work dir that is a
file or a symlink)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import sinecompress
from sinecompress.io.writer import save_tensors

from ._safety import FAST, leftovers, readable, refused, sc, snapshot, tiny


def _interrupted(src, out) -> object:
    """Run the weight-only fit and stop it after its first layer, as Ctrl-C would; return the work dir."""
    def stop(layer, done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sinecompress.factorize(src, out, method="svd", rank=2, progress=stop)
    work = out.parent / f".{out.name}.sc.work"
    assert (work / "layer-00000.safetensors").exists()
    return work


@pytest.fixture
def fresh(tmp_path):
    """The source and the bytes of an uninterrupted run's output."""
    src = tiny(tmp_path / "m.safetensors")
    ref = tmp_path / "ref" / "o.safetensors"
    ref.parent.mkdir()
    assert sc("factorize", src, "--out", ref, *FAST)[0] == 0
    return src, ref.read_bytes()


def _rewrite(layer_file, change):
    with safe_open(str(layer_file), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # not views of the file rewritten below
    tensors, meta = change(tensors, meta)
    save_tensors(layer_file, tensors, meta)


TAMPER = {
    "nan-factor": lambda t, m: ({**t, "u": torch.full_like(t["u"], float("nan"))}, m),
    "inf-factor": lambda t, m: ({**t, "v": torch.full_like(t["v"], float("inf"))}, m),
    "nan-error": lambda t, m: (t, {**m, "rel_error": "NaN"}),
    "other-layer": lambda t, m: (t, {**m, "layer": "blocks.0.fc2"}),
    "wrong-shape": lambda t, m: ({**t, "u": torch.zeros(3, 3)}, m),
    "extra-json": lambda t, m: (t, {**m, "extra": "[" * 50_000}),
    "omega-huge": lambda t, m: (t, {**m, "extra": json.dumps({"omega": 1e308})}),
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_tampered_layer_is_fitted_again(tmp_path, fresh, how):
    src, expected = fresh
    out = tmp_path / "o.safetensors"
    work = _interrupted(src, out)
    _rewrite(work / "layer-00000.safetensors", TAMPER[how])
    code, _, err = sc("factorize", src, "--out", out, *FAST, "--resume")
    assert code == 0, err
    assert "Traceback" not in err
    readable(out)
    assert out.read_bytes() == expected  # as if never interrupted
    assert leftovers(tmp_path) == []


def test_planted_dense_record_does_not_keep_a_finite_layer_dense(tmp_path, fresh):
    src, expected = fresh
    out = tmp_path / "o.safetensors"
    work = _interrupted(src, out)
    (work / "layer-00001.dense.json").write_text(json.dumps({"layer": "blocks.0.fc2", "reason": "planted"}))
    (work / "layer-00000.safetensors").unlink()
    (work / "layer-00000.dense.json").write_text(json.dumps({"layer": "blocks.0.fc1", "reason": "planted"}))
    code, _, err = sc("factorize", src, "--out", out, *FAST, "--resume")
    assert code == 0, err
    assert "keeping it dense" not in err
    names = readable(out)
    assert "blocks.0.fc1.lowrank_u" in names and "blocks.0.fc2.lowrank_u" in names
    assert out.read_bytes() == expected


@pytest.mark.parametrize("garbage", ["not json", json.dumps([1, 2]), "[" * 100_000])
def test_damaged_run_record_refuses_resume_in_one_line(tmp_path, fresh, garbage):
    src, _ = fresh
    out = tmp_path / "o.safetensors"
    work = _interrupted(src, out)
    (work / "run.json").write_text(garbage)
    keep = snapshot(work)
    refused(sc("factorize", src, "--out", out, *FAST, "--resume"), 2, "--resume", keep=keep, absent=(out,))
    code, _, err = sc("factorize", src, "--out", out, *FAST)  # without --resume: discarded with a warning
    assert code == 0 and "warning:" in err, err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling"])
def test_work_dir_that_is_not_a_directory(tmp_path, kind):
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    work = tmp_path / ".o.safetensors.sc.work"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    if kind == "file":
        work.write_text("not a directory")
    elif kind == "symlink":
        work.symlink_to(elsewhere, target_is_directory=True)
    else:
        work.symlink_to(tmp_path / "nowhere")
    keep = snapshot(tmp_path)
    for flags in ((), ("--resume",)):
        refused(sc("factorize", src, "--out", out, *FAST, *flags), 2, ".o.safetensors.sc.work", keep=keep,
                absent=(out,))


def test_work_layer_file_that_links_elsewhere_is_not_followed(tmp_path, fresh):
    """A layer file swapped for a link to another file is refitted, and the link's target is untouched."""
    src, expected = fresh
    out = tmp_path / "o.safetensors"
    work = _interrupted(src, out)
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes((work / "layer-00000.safetensors").read_bytes())
    (work / "layer-00000.safetensors").unlink()
    (work / "layer-00000.safetensors").symlink_to(victim)
    before = victim.read_bytes()
    code, _, err = sc("factorize", src, "--out", out, *FAST, "--resume")
    assert code == 0, err
    assert victim.read_bytes() == before
    assert out.read_bytes() == expected
