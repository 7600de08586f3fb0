"""`sinecompress convert` and the init checkpoint it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sinecompress.cli import main
from sinecompress.errors import InputError, UsageError
from sinecompress.scratch.init_checkpoint import convert_timm, load_init, read_init
from sinecompress.nn.layers import SineLowRankLinear

ROOT = Path(__file__).resolve().parent.parent
VIT = "timm:test_vit"  # timm's own tiny test architecture (64-dim, 1 block)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


@pytest.mark.slow
def test_cli_happy_path_writes_checkpoint_with_plan(tmp_path, capsys):
    out = tmp_path / "vit_sine.safetensors"
    code, stdout, _ = run_cli(["convert", VIT, "--rank", "4", "--omega", "500", "--target",
                               r"blocks\.\d+\.mlp\.fc[12]", "--out", str(out), "--num-classes", "10",
                               "--json"], capsys)
    assert code in (0, None)
    summary = json.loads(stdout)
    assert summary["rank"] == 4 and summary["omega"] == 500.0
    names = [e["name"] for e in summary["layers"]]
    assert names and all(n.endswith(("mlp.fc1", "mlp.fc2")) for n in names)
    with safe_open(str(out), "pt") as f:
        doc = json.loads(f.metadata()["sinecompress"])
        keys = set(f.keys())
    assert doc["format_version"] == 1 and doc["kind"] == "init" and doc["model"] == VIT
    assert doc["layers"] == summary["layers"]
    assert f"{names[0]}.u" in keys and f"{names[0]}.weight" not in keys
    # No temporary files are left next to the output.
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    # The checkpoint round-trips into a runnable model with identical tensors.
    model, doc2 = load_init(out)
    assert doc2 == doc
    assert isinstance(model.get_submodule(names[0]), SineLowRankLinear)
    with safe_open(str(out), "pt") as f:
        assert torch.equal(model.get_submodule(names[0]).u, f.get_tensor(f"{names[0]}.u"))
    cfg = model.pretrained_cfg.get("input_size", (3, 160, 160))
    assert model(torch.randn(1, *cfg)).shape == (1, 10)


def test_existing_output_refused_without_overwrite(tmp_path):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="--overwrite"):
        convert_timm(VIT, out, rank=2, omega=100, targets=[r"blocks\.0\.mlp\.fc1"])
    assert out.read_bytes() == b"keep me"
    convert_timm(VIT, out, rank=2, omega=100, targets=[r"blocks\.0\.mlp\.fc1"], overwrite=True)
    assert read_init(out)["rank"] == 2


@pytest.mark.parametrize("model,extra,needle", [
    ("timm:no_such_model_xyz", [], "unknown timm architecture"),
    ("vit_small_patch16_224", [], "timm:NAME"),
    (VIT, ["--target", "blocks.0.mlp.fc9"], "matches no linear layer"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, model, extra, needle):
    out = tmp_path / "o.safetensors"
    argv = ["convert", model, "--rank", "2", "--omega", "100", "--out", str(out)]
    argv += extra or ["--target", r"blocks\.\d+\.mlp\.fc1"]
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 2 and needle in stderr
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_subprocess_rank_zero_exit_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "sinecompress", "convert", VIT, "--rank", "0", "--omega", "5",
                        "--target", "x", "--out", str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "rank must be a positive integer" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_read_init_rejects_non_init_files(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(InputError, match="no sinecompress metadata"):
        read_init(p)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        read_init(bad)
