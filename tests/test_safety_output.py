"""The output may never destroy the input or anything the tool did not write (issue 13, data loss).

Every refusal: exit 2, one line naming --out, the input tree and every other file unchanged, no
temporary, lock or work name left behind."""

from __future__ import annotations

import os
import stat

import pytest

from ._safety import FAST, compressed, model_dir, refused, sc, sharded_dir, snapshot, tiny, tiny_bert


@pytest.fixture
def models(tmp_path):
    """models/m.safetensors beside an unrelated file the user cares about."""
    d = tmp_path / "models"
    d.mkdir()
    tiny(d / "m.safetensors")
    (d / "notes.txt").write_text("precious")
    return d


def test_out_equal_to_the_input_directory_with_overwrite(models):
    keep = snapshot(models)
    line = refused(sc("factorize", models / "m.safetensors", "--out", models, "--overwrite", *FAST), 2, "--out",
                   keep=keep, clean=(models, models.parent))
    assert "contains the input" in line


def test_recipe_output_equal_to_its_model_directory(tmp_path):
    d = model_dir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {d}\noutput: {d}\ndefaults: {{method: svd, rank: 2}}\n")
    keep = snapshot(d, recipe)
    refused(sc("factorize", "--recipe", recipe, "--overwrite"), 2, "--out", keep=keep, clean=(tmp_path, d),
            after_plan=True)


@pytest.mark.parametrize("out", [".", ".."])
def test_out_is_the_working_directory_or_a_parent(models, monkeypatch, out):
    monkeypatch.chdir(models)
    keep = snapshot(models.parent)
    refused(sc("factorize", "m.safetensors", "--out", out, "--overwrite", *FAST), 2, "--out", keep=keep,
            clean=(models, models.parent))


def test_out_inside_the_input_directory(tmp_path):
    d = model_dir(tmp_path)
    keep = snapshot(d)
    refused(sc("factorize", d, "--out", d / "sine", *FAST), 2, "--out", "lies inside", keep=keep, clean=(d,),
            absent=(d / "sine",))


def test_out_inside_the_input_through_a_symlinked_parent(tmp_path):
    d = model_dir(tmp_path)
    (tmp_path / "alias").symlink_to(d)
    keep = snapshot(d)
    refused(sc("factorize", d, "--out", tmp_path / "alias" / "sine", *FAST), 2, "--out", keep=keep, clean=(d,),
            absent=(d / "sine",))


def test_relative_out_that_resolves_into_the_input(tmp_path, monkeypatch):
    d = model_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    keep = snapshot(d)
    refused(sc("factorize", "model", "--out", "model/../model/x", *FAST), 2, "--out", keep=keep, clean=(d,),
            absent=(d / "x",))


@pytest.mark.parametrize("trailing", ["", "/"])
def test_out_equal_to_the_input_directory_spelled_differently(tmp_path, trailing):
    d = model_dir(tmp_path)
    keep = snapshot(d)
    refused(sc("factorize", d, "--out", f"{d}{trailing}", "--overwrite", *FAST), 2, "--out", keep=keep,
            clean=(d, tmp_path))


def test_out_equal_to_the_input_file(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    keep = snapshot(tmp_path)
    refused(sc("factorize", src, "--out", src, "--overwrite", *FAST), 2, "--out", keep=keep, clean=(tmp_path,))


def test_out_is_a_symlink_to_the_input_file(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    (tmp_path / "link.safetensors").symlink_to(src)
    keep = snapshot(tmp_path)
    refused(sc("factorize", src, "--out", tmp_path / "link.safetensors", "--overwrite", *FAST), 2, "--out",
            keep=keep, clean=(tmp_path,))


def test_out_equal_to_a_shard_of_a_sharded_input(tmp_path):
    d = sharded_dir(tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[0]
    keep = snapshot(d)
    refused(sc("factorize", d, "--out", shard, "--overwrite", *FAST), 2, "--out", keep=keep, clean=(d,))


def test_inflate_and_merge_refuse_their_input_as_output(tmp_path):
    c = compressed(tmp_path)
    keep = snapshot(tmp_path)
    refused(sc("inflate", c, "--out", c, "--overwrite"), 2, "--out", keep=keep, clean=(tmp_path,))
    refused(sc("inflate", c, "--out", tmp_path, "--overwrite"), 2, "--out", keep=keep, clean=(tmp_path,))


def _device(tmp_path):
    """A character device to write to: one made here (root can), else /dev/null."""
    dev = tmp_path / "dev-null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return dev
    except PermissionError:
        return os.devnull


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_is_a_character_device_or_a_fifo(tmp_path, overwrite):
    src = tiny(tmp_path / "m.safetensors")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    flags = ["--overwrite"] if overwrite else []
    for target in (_device(tmp_path), fifo):
        keep = snapshot(tmp_path)
        line = refused(sc("factorize", src, "--out", target, *flags, *FAST), 2, "--out", keep=keep,
                       clean=(tmp_path,))
        assert "device" in line or "FIFO" in line


def test_overwrite_refuses_a_foreign_file(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    foreign = tmp_path / "thesis.safetensors"
    foreign.write_text("four years of work")
    keep = snapshot(tmp_path)
    refused(sc("factorize", src, "--out", foreign, "--overwrite", *FAST), 2, "--out", "not an output", keep=keep,
            clean=(tmp_path,))


def test_overwrite_refuses_a_foreign_directory(tmp_path):
    d = model_dir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "photos.txt").write_text("x")
    keep = snapshot(tmp_path)
    refused(sc("factorize", d, "--out", home, "--overwrite", *FAST), 2, "--out", keep=keep, clean=(tmp_path,))


def test_overwrite_refuses_the_wrong_kind(tmp_path):
    """A directory run never replaces a file, nor a file run a directory, even one this tool wrote."""
    src = tiny(tmp_path / "m.safetensors")
    d = model_dir(tmp_path)
    out_dir = tmp_path / "dir-out"
    assert sc("factorize", d, "--out", out_dir, *FAST)[0] == 0
    keep = snapshot(out_dir)
    refused(sc("factorize", src, "--out", out_dir, "--overwrite", *FAST), 2, "--out", keep=keep, clean=(tmp_path,))


def test_overwrite_still_replaces_its_own_output(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    out = tmp_path / "o.safetensors"
    assert sc("factorize", src, "--out", out, *FAST)[0] == 0
    refused(sc("factorize", src, "--out", out, *FAST), 2, "already exists", keep=snapshot(out), clean=(tmp_path,))
    code, _, err = sc("factorize", src, "--out", out, "--overwrite", "--method", "svd", "--rank", "3")
    assert code == 0, err
    assert not [p for p in tmp_path.iterdir() if ".sc." in p.name]


def test_out_below_a_file(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    afile = tmp_path / "afile"
    afile.write_text("x")
    keep = snapshot(tmp_path)
    refused(sc("factorize", src, "--out", afile / "o.safetensors", *FAST), 2, "afile", keep=keep, clean=(tmp_path,))
    refused(sc("inflate", compressed(tmp_path), "--out", afile / "o.safetensors"), 2, "afile", clean=(tmp_path,))
    refused(sc("recipe", "init", "--out", afile / "r.yaml"), 2, "afile", clean=(tmp_path,))


def test_recipe_output_below_a_file_is_not_created(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    (tmp_path / "afile").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {src}\noutput: {tmp_path}/afile/deeper/o.safetensors\n"
                      "defaults: {method: svd, rank: 2}\n")
    keep = snapshot(tmp_path)
    refused(sc("factorize", "--recipe", recipe), 2, "afile", keep=keep, clean=(tmp_path,), after_plan=True)


def test_a_refused_recipe_run_prints_only_its_error(tmp_path):
    d = model_dir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {d}\noutput: {d}\ndefaults: {{method: svd, rank: 2}}\n")
    refused(sc("factorize", "--recipe", recipe, "--overwrite"), 2, "--out")


def test_plot_never_replaces_an_input_or_a_foreign_file(tmp_path):
    """report/spectrum --plot redraw an earlier PNG freely, but never write over what they read or over
    a file that is not a PNG."""
    pytest.importorskip("matplotlib")
    src = tiny(tmp_path / "m.safetensors")
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    keep = snapshot(tmp_path)
    refused(sc("report", src, "--plot", src), 2, "--plot", "is the input", keep=keep, clean=(tmp_path,))
    refused(sc("report", src, "--plot", notes), 2, "--plot", "not a PNG", keep=keep, clean=(tmp_path,))
    refused(sc("spectrum", src, "--layer", "blocks.0.fc1", "--plot", src), 2, "--plot", keep=keep, clean=(tmp_path,))
    refused(sc("report", src, "--plot", tmp_path), 2, "--plot", keep=keep, clean=(tmp_path,))
    png = tmp_path / "spectra.png"
    for _ in range(2):  # written, then redrawn over its own earlier PNG
        code, _, err = sc("report", src, "--plot", png)
        assert code == 0, err
        assert png.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if ".sc." in p.name]


@pytest.mark.parametrize("what", ["calib", "recipe"])
def test_overwrite_never_deletes_a_calibration_file_or_recipe_it_reads(tmp_path, what):
    d = tiny_bert(tmp_path) if what == "calib" else model_dir(tmp_path)
    out = tmp_path / "out"
    fast = (*FAST, "--steps", "0") if what == "calib" else FAST
    assert sc("factorize", d, "--out", out, *fast)[0] == 0
    kept = out / ("calib.txt" if what == "calib" else "r.yaml")
    if what == "calib":
        kept.write_text("hello world\nsome text to calibrate on\n")
        args = ("factorize", d, "--out", out, "--overwrite", "--calib", kept, *fast)
    else:
        kept.write_text(f"version: 1\nmodel: {d}\noutput: {out}\ndefaults: {{method: svd, rank: 2}}\n")
        args = ("factorize", "--recipe", kept, "--overwrite")
    keep = snapshot(kept)
    refused(sc(*args), 2, str(kept.name), keep=keep, after_plan=True)


def test_a_newline_in_a_path_does_not_split_the_error_line(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    odd = tmp_path / "a\nb"
    refused(sc("factorize", src, "--out", odd / "missing" / "o.safetensors", *FAST), 2, "a\\nb",
            clean=(tmp_path,))
