"""Disk and path faults (issue 13): no space, a read-only file system, no permission, a file-size limit,
and unreadable or misshapen index and side files. Output faults exit 5 naming the output, input faults
exit 3 naming the file; the old output is kept and no temporary file is left.

ENOSPC and EROFS need a small tmpfs: mounted here when this process may (root in a container), else
skipped with the reason. EACCES needs a user that permissions bind: skipped as root."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from ._safety import FAST, compressed, leftovers, model_dir, refused, sc, sharded_dir, snapshot, tiny


@contextlib.contextmanager
def tmpfs(path, size: str = "64k", readonly: bool = False):
    path.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small or read-only file system here")
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode}); needs root or a "
                    "user namespace")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _big(path):
    """About 1 MB of weights: more than the small tmpfs holds."""
    g = torch.Generator().manual_seed(0)
    save_file({"blocks.0.fc1.weight": torch.randn(256, 128, generator=g), "store": torch.randn(512, 256, generator=g)},
              str(path))
    return path


def _big_compressed(tmp_path):
    c = tmp_path / "c.safetensors"
    assert sc("factorize", _big(tmp_path / "big.safetensors"), "--out", c, "--method", "svd", "--rank", "2",
              "--no-calib")[0] == 0
    return c


def test_no_space_left(tmp_path):
    c = _big_compressed(tmp_path)
    with tmpfs(tmp_path / "small", "64k") as d:
        (d / "old.safetensors").write_bytes(b"x")  # something already there stays as it was
        keep = snapshot(d)
        refused(sc("inflate", c, "--out", d / "dense.safetensors"), 5, "dense.safetensors", keep=keep, clean=(d,))
        _fill(d)
        keep = snapshot(d)
        refused(sc("recipe", "init", "--out", d / "r.yaml"), 5, "r.yaml", keep=keep, clean=(d,))


def _fill(d) -> None:
    """Take whatever space is left on the small file system."""
    with contextlib.suppress(OSError):
        (d / "filler").write_bytes(b"\0" * 1024 * 1024)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_no_space_left_after_the_fit(tmp_path, kind):
    src = _big(tmp_path / "m.safetensors") if kind == "file" else model_dir(tmp_path)
    if kind == "dir":
        _big(src / "model.safetensors")
    with tmpfs(tmp_path / "small", "64k") as d:
        (d / "old.safetensors").write_bytes(b"x")
        keep = snapshot(d)
        out = d / "out"
        refused(sc("factorize", src, "--out", out, "--method", "svd", "--rank", "2", "--no-calib"), 5,
                "out", keep=keep, clean=(d,), absent=(out,))


def test_no_space_for_the_work_dir(tmp_path):
    src = _big(tmp_path / "m.safetensors")
    with tmpfs(tmp_path / "small", "16k") as d:
        _fill(d)
        keep = snapshot(d)
        refused(sc("factorize", src, "--out", d / "o.safetensors", "--rank", "2", "--fit-steps", "2", "--omega", "10",
                   "--no-calib"), 5, "o.safetensors", keep=keep, clean=(d,))


def test_read_only_file_system(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as d:
        for args in (("factorize", src, "--out", d / "o.safetensors", *FAST),
                     ("inflate", compressed(tmp_path), "--out", d / "o.safetensors"),
                     ("recipe", "init", "--out", d / "r.yaml")):
            refused(sc(*args), 5, str(d), absent=(d / "o.safetensors", d / "r.yaml"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions; the read-only "
                    "file system test covers the same failure")
def test_permission_denied(tmp_path):
    src = tiny(tmp_path / "m.safetensors")
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o500)
    try:
        refused(sc("factorize", src, "--out", d / "o.safetensors", *FAST), 5, str(d), absent=(d / "o.safetensors",))
    finally:
        d.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_side_file(tmp_path):
    d = model_dir(tmp_path)
    (d / "notes.txt").write_text("x")
    (d / "notes.txt").chmod(0)
    refused(sc("factorize", d, "--out", tmp_path / "o", *FAST), 3, "notes.txt", clean=(tmp_path,))


def test_file_size_limit(tmp_path):
    """EFBIG (ulimit -f): the output cannot grow; the run says so and leaves nothing."""
    c = _big_compressed(tmp_path)
    out = tmp_path / "o.safetensors"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        result = sc("inflate", c, "--out", out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    refused(result, 5, "o.safetensors", clean=(tmp_path,), absent=(out,))


@pytest.mark.parametrize("member", ["model.safetensors.index.json", "config.json"])
def test_index_or_config_that_is_a_directory(tmp_path, member):
    d = sharded_dir(tmp_path) if member.endswith("index.json") else model_dir(tmp_path)
    (d / member).unlink()
    (d / member).mkdir()
    refused(sc("factorize", d, "--out", tmp_path / "o", *FAST), 3, member, clean=(tmp_path,))


def test_dangling_links_in_a_model_directory(tmp_path):
    d = model_dir(tmp_path)
    (d / "gone.txt").symlink_to(d / "nowhere.txt")  # inside the directory, but leads nowhere
    code, _, err = sc("factorize", d, "--out", tmp_path / "o", *FAST)
    if code == 0:
        assert "Traceback" not in err and "gone.txt" in err  # left out with a warning
    else:
        refused((code, "", err), 3, "gone.txt", clean=(tmp_path,))
    (d / "config.json").unlink()
    (d / "config.json").symlink_to(d / "nowhere.json")
    refused(sc("factorize", d, "--out", tmp_path / "o2", *FAST), 3, "config.json", clean=(tmp_path,))


def test_side_file_named_like_an_output_part(tmp_path):
    """Side files never collide with what the writer produces (weights and index are not copied)."""
    d = model_dir(tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    code, _, err = sc("factorize", d, "--out", tmp_path / "o", *FAST)
    refused((code, "", err), 3, "model.safetensors.index.json", clean=(tmp_path,)) if code else None
    assert leftovers(tmp_path) == []
