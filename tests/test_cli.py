"""The CLI as a user runs it (in-process, through the real entry point): exit codes, one-line errors,
no partial output."""

import json

import pytest

import sinecompress

from .helpers import assert_one_line_error, cli, run_cli


def no_output_left(directory, name):
    return not any(p.name.startswith(name) or p.name.startswith("." + name) for p in directory.iterdir())


def test_entry_point_in_a_real_process(tmp_path):
    """`python -m sinecompress` itself (import time, interpreter exit code): the one place a subprocess is
    the point for these checks; the other CLI tests run the same entry point in-process."""
    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("sinecompress ")
    p = run_cli("factorize", tmp_path / "nope.safetensors", "--rank", "4", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(p.returncode, p.stderr, 3, "nope.safetensors", "no such file")
    assert p.stdout == "" and list(tmp_path.iterdir()) == []


def test_version_and_help():
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("sinecompress ")
    for cmd in ("factorize", "inflate"):
        code, out, _ = cli(cmd, "--help")
        assert code == 0 and "--out" in out


def test_factorize_json_then_inflate(tiny_file, tmp_path):
    out = tmp_path / "c.safetensors"
    code, stdout, err = cli("factorize", tiny_file, "--rank", "4", "--omega", "30", "--fit-steps", "5", "--out", out,
                            "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["params_after"] < s["params_before"] and len(s["layers"]) == 4
    assert "blocks.0.fc1" in err  # the rich summary goes to stderr
    code, _, err = cli("inflate", out, "--out", tmp_path / "d.safetensors")
    assert code == 0, err


def test_missing_file(tmp_path):
    code, _, err = cli("factorize", tmp_path / "nope.safetensors", "--rank", "4", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 3, "nope.safetensors", "no such file")
    assert no_output_left(tmp_path, "o.safetensors")


def test_corrupt_file(tmp_path, tiny_file):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_file.read_bytes()[:300])
    code, _, err = cli("factorize", bad, "--rank", "4", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 3, "bad.safetensors")
    assert no_output_left(tmp_path, "o.safetensors")


@pytest.mark.parametrize("rank", ["0", "-3"])
def test_nonpositive_rank(tiny_file, tmp_path, rank):
    code, _, err = cli("factorize", tiny_file, "--rank", rank, "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 2, "--rank")
    assert no_output_left(tmp_path, "o.safetensors")


def test_bad_omega(tiny_file, tmp_path):
    code, _, err = cli("factorize", tiny_file, "--rank", "2", "--omega", "-5", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 2, "--omega")


def test_pattern_matching_nothing(tiny_file, tmp_path):
    code, _, err = cli("factorize", tiny_file, "--rank", "4", "--target", "blocks.*attn", "--out",
                       tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 2, "blocks.*attn", "matches no")
    assert no_output_left(tmp_path, "o.safetensors")


def test_existing_output_needs_overwrite(tiny_file, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    code, _, err = cli("factorize", tiny_file, "--rank", "4", "--fit-steps", "2", "--out", out)
    assert_one_line_error(code, err, 2, "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    # --overwrite replaces an earlier output, never a file this tool cannot have written
    code, _, err = cli("factorize", tiny_file, "--rank", "4", "--fit-steps", "2", "--out", out, "--overwrite")
    assert_one_line_error(code, err, 2, "not a safetensors file", "refusing to replace it")
    assert out.read_bytes() == b"keep me"
    out.unlink()
    code, _, err = cli("factorize", tiny_file, "--rank", "4", "--fit-steps", "2", "--out", out)
    assert code == 0, err
    first = out.read_bytes()
    code, _, err = cli("factorize", tiny_file, "--rank", "4", "--fit-steps", "2", "--seed", "1", "--out", out,
                       "--overwrite")
    assert code == 0, err
    assert out.read_bytes() != first
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []


def test_inflate_of_a_dense_file_is_refused(tiny_file, tmp_path):
    code, _, err = cli("inflate", tiny_file, "--out", tmp_path / "d.safetensors")
    assert_one_line_error(code, err, 3, "not a sinecompress checkpoint")
    assert no_output_left(tmp_path, "d.safetensors")


COMMANDS = ["factorize", "inflate", "report", "spectrum", "eval", "convert", "adapter merge", "recipe init",
            "recipe show", "recipe validate", "recipe list"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_what_each_option_takes(command):
    """Every option's metavar says what it takes (PATH, REGEX, K, auto|cpu|cuda), not a Python type name."""
    code, out, err = cli(*command.split(), "--help")
    assert code == 0, err
    options = [ln for ln in out.splitlines() if ln.lstrip().startswith("-")]
    assert options
    for generic in ("<str>", "<int>", "<float>", "<path>", " TEXT ", " INTEGER ", " FLOAT "):
        assert not [ln for ln in options if generic in ln], (command, generic, out)


def test_progress_in_a_log_is_plain_timestamped_lines(tiny_file, tmp_path):
    """Off a terminal (CI logs), progress is one plain line per stage and per fitted layer, no bar codes."""
    import re

    code, _, err = cli("factorize", tiny_file, "--method", "svd", "--rank", "2", "--out", tmp_path / "o.safetensors")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if re.match(r"\[\s*\d+(\.\d)? (s|min)\] ", ln)]
    stages = [re.sub(r"^\[[^]]*\] ", "", ln).split(" ")[0] for ln in lines]
    assert stages[0] == "loading" and "fitting" in stages and "writing" in stages, err
    assert any(re.search(r"fitting \d+/\d+ blocks\.0\.fc1", ln) for ln in lines), err
    assert "\x1b[" not in err and "\r" not in err


def test_shell_completion_script(monkeypatch):
    # Asked for bash by name: `--show-completion` detects the shell from the parent processes, which a
    # detached run (nohup, a background job) does not have.
    monkeypatch.setenv("_SINECOMPRESS_COMPLETE", "source_bash")
    code, out, err = cli()
    assert code == 0, err
    assert "_SINECOMPRESS_COMPLETE" in out and "complete " in out


def test_summary_fits_80_columns_without_wrapping_names(tiny_bert_dir, tmp_path):
    """In an 80-column log the summary table keeps each layer on one line (shape and params move to --json)."""
    p = run_cli("factorize", tiny_bert_dir, "--no-calib", "--method", "svd", "--rank", "2",
                "--out", tmp_path / "o", env_extra={"COLUMNS": "80"}, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert max(len(ln) for ln in lines if not ln.startswith("[")) <= 80, p.stderr
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.1.intermediate.dense", "pooler.dense"]
    for name in names:
        assert any(name in ln for ln in lines), (name, p.stderr)


def test_narrow_summaries_keep_the_block_index_and_list_blocks_in_order():
    from sinecompress.cli.summary_view import natural_key, short_name

    assert short_name("model.layers.12.self_attn.k_proj", 16) == "m.l.12.s.k_proj"
    assert short_name("model.layers.12.self_attn.k_proj", 40) == "model.layers.12.self_attn.k_proj"
    assert len(short_name("a_very_long_single_module_name", 16)) == 16
    names = ["model.layers.10.mlp", "model.layers.2.mlp", "lm_head", "model.layers.1.mlp"]
    assert sorted(names, key=natural_key) == ["lm_head", "model.layers.1.mlp", "model.layers.2.mlp",
                                              "model.layers.10.mlp"]


def test_the_summary_names_the_gpu_peak_of_a_cuda_run(tiny_file, tmp_path, capsys):
    from sinecompress.cli.summary_view import print_summary

    s = sinecompress.factorize(tiny_file, tmp_path / "o", rank=4, fit_steps=2)
    assert "peak_gpu_mib" not in s  # a CPU run
    print_summary({**s, "peak_gpu_mib": {"allocated": 1234, "reserved": 2048}})  # as a CUDA run records it
    assert "peak GPU memory: 1,234 MiB in tensors, 2,048 MiB taken from the card" in capsys.readouterr().err
    print_summary(s)
    assert "peak GPU" not in capsys.readouterr().err


def test_the_finetune_line_says_when_the_teachers_states_were_rerun():
    from sinecompress.cli.summary_view import finetune_line

    ft = {"mode": "global", "steps": 200, "device": "cpu", "loss_start": 0.2, "loss_end": 0.1, "seconds": 9.0,
          "teacher_states": {"held": 58, "recomputed": 0, "held_mib": 364.0}}
    assert finetune_line(ft) == "fine-tune: 200 steps on cpu, distillation loss 0.2000 → 0.1000 (9.0 s)"
    rerun = finetune_line({**ft, "teacher_states": {"held": 40, "recomputed": 18, "held_mib": 1020.5}})
    assert rerun.endswith("; the teacher's states on 18 of 58 batches rerun at each use (over 1,024 MiB)")
