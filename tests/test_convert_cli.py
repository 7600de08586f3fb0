"""`sinecompress convert` and the init checkpoint it writes."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sinecompress.errors import InputError, UsageError
from sinecompress.nn.layers import SineLowRankLinear
from sinecompress.scratch.init_checkpoint import META_KEY, convert_timm, load_init, read_init

from .helpers import assert_one_line_error, cli

VIT = "timm:test_vit"  # timm's own tiny test architecture (64-dim, 1 block)


@pytest.mark.slow
def test_cli_happy_path_writes_checkpoint_with_plan(tmp_path):
    out = tmp_path / "vit_sine.safetensors"
    code, stdout, err = cli("convert", VIT, "--rank", "4", "--omega", "500", "--target", r"blocks\.\d+\.mlp\.fc[12]",
                            "--out", out, "--num-classes", "10", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["rank"] == 4 and summary["omega"] == 500.0
    names = [e["name"] for e in summary["layers"]]
    assert names and all(n.endswith(("mlp.fc1", "mlp.fc2")) for n in names)
    with safe_open(str(out), "pt") as f:
        doc = json.loads(f.metadata()[META_KEY])
        assert "sinecompress" not in f.metadata()  # the compressed format's key means something else
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
    convert_timm(VIT, out, rank=2, omega=100, targets=[r"blocks\.0\.mlp\.fc1"])
    first = out.read_bytes()
    with pytest.raises(UsageError, match="--overwrite"):
        convert_timm(VIT, out, rank=3, omega=100, targets=[r"blocks\.0\.mlp\.fc1"])
    assert out.read_bytes() == first
    convert_timm(VIT, out, rank=3, omega=100, targets=[r"blocks\.0\.mlp\.fc1"], overwrite=True)
    assert read_init(out)["rank"] == 3
    other = tmp_path / "other.safetensors"  # not a file this tool wrote: never replaced
    other.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="refusing to replace it even with --overwrite"):
        convert_timm(VIT, other, rank=2, omega=100, targets=[r"blocks\.0\.mlp\.fc1"], overwrite=True)
    assert other.read_bytes() == b"keep me"


@pytest.mark.parametrize("model,extra,needle", [
    ("timm:no_such_model_xyz", [], "unknown timm architecture"),
    ("vit_small_patch16_224", [], "timm:NAME"),
    (VIT, ["--target", "blocks.0.mlp.fc9"], "matches no linear layer"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, model, extra, needle):
    out = tmp_path / "o.safetensors"
    argv = ["convert", model, "--rank", "2", "--omega", "100", "--out", out]
    argv += extra or ["--target", r"blocks\.\d+\.mlp\.fc1"]
    code, _, stderr = cli(*argv)
    assert_one_line_error(code, stderr, 2, needle)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_rank_zero_exit_2(tmp_path):
    code, stdout, err = cli("convert", VIT, "--rank", "0", "--omega", "5", "--target", "x",
                            "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 2, "rank must be a positive integer")
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_read_init_rejects_non_init_files(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(InputError, match="no sinecompress metadata"):
        read_init(p)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        read_init(bad)
