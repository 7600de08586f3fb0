"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors, no partial output."""

import json

import pytest

from .conftest import run_cli


def assert_one_line_error(proc, code, *needles):
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def no_output_left(directory, name):
    return not any(p.name.startswith(name) or p.name.startswith("." + name) for p in directory.iterdir())


def test_version_and_help():
    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("sinecompress ")
    for cmd in ("factorize", "inflate"):
        p = run_cli(cmd, "--help")
        assert p.returncode == 0 and "--out" in p.stdout


def test_factorize_json_then_inflate(tiny_file, tmp_path):
    out = tmp_path / "c.safetensors"
    p = run_cli("factorize", tiny_file, "--rank", "4", "--omega", "30", "--steps", "5", "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["params_after"] < s["params_before"] and len(s["layers"]) == 4
    assert "blocks.0.fc1" in p.stderr  # the rich summary goes to stderr
    p = run_cli("inflate", out, "--out", tmp_path / "d.safetensors")
    assert p.returncode == 0, p.stderr


def test_missing_file(tmp_path):
    p = run_cli("factorize", tmp_path / "nope.safetensors", "--rank", "4", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(p, 3, "nope.safetensors", "no such file")
    assert no_output_left(tmp_path, "o.safetensors")


def test_corrupt_file(tmp_path, tiny_file):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_file.read_bytes()[:300])
    p = run_cli("factorize", bad, "--rank", "4", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(p, 3, "bad.safetensors")
    assert no_output_left(tmp_path, "o.safetensors")


@pytest.mark.parametrize("rank", ["0", "-3"])
def test_nonpositive_rank(tiny_file, tmp_path, rank):
    p = run_cli("factorize", tiny_file, "--rank", rank, "--out", tmp_path / "o.safetensors")
    assert_one_line_error(p, 2, "--rank")
    assert no_output_left(tmp_path, "o.safetensors")


def test_bad_omega(tiny_file, tmp_path):
    p = run_cli("factorize", tiny_file, "--rank", "2", "--omega", "-5", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(p, 2, "--omega")


def test_pattern_matching_nothing(tiny_file, tmp_path):
    p = run_cli("factorize", tiny_file, "--rank", "4", "--target", "blocks.*attn", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(p, 2, "blocks.*attn", "matches no")
    assert no_output_left(tmp_path, "o.safetensors")


def test_existing_output_needs_overwrite(tiny_file, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    p = run_cli("factorize", tiny_file, "--rank", "4", "--steps", "2", "--out", out)
    assert_one_line_error(p, 2, "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    p = run_cli("factorize", tiny_file, "--rank", "4", "--steps", "2", "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() != b"keep me"
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []


def test_inflate_of_a_dense_file_is_refused(tiny_file, tmp_path):
    p = run_cli("inflate", tiny_file, "--out", tmp_path / "d.safetensors")
    assert_one_line_error(p, 3, "not a sinecompress checkpoint")
    assert no_output_left(tmp_path, "d.safetensors")
