import os
import subprocess
import sys

import torch
from torch import nn

from sinecompress import SineLowRankLinear, compress_

from .helpers import ROOT


def test_compress_in_place_replaces_only_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(5, 16)
    y0 = model(x)
    records = compress_(model, rank=4, omega=30.0, fit_steps=50, targets=[r"0"])
    assert [r["name"] for r in records] == ["0"]
    assert isinstance(model[0], SineLowRankLinear) and isinstance(model[2], nn.Linear)
    y = model(x)
    assert y.shape == y0.shape and torch.isfinite(y).all()


def test_timm_source_reads_the_local_cache_only(tmp_path):
    """``timm:NAME`` loads pretrained weights from a Hugging Face cache laid out as the hub writes it."""
    script = f"""
import timm, torch, sys
from safetensors.torch import save_file
sys.path.insert(0, {str(ROOT)!r})
name = "vit_tiny_patch16_224"
model = timm.create_model(name, pretrained=False)
hub_id = model.pretrained_cfg["hf_hub_id"]
repo = {str(tmp_path)!r} + "/models--" + hub_id.replace("/", "--")
import os
os.makedirs(repo + "/refs"); os.makedirs(repo + "/snapshots/abc123")
open(repo + "/refs/main", "w").write("abc123")
save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, repo + "/snapshots/abc123/model.safetensors")
from sinecompress.io.open import open_source
src = open_source("timm:" + name)
assert torch.equal(src.get("blocks.0.mlp.fc1.weight"), model.state_dict()["blocks.0.mlp.fc1.weight"])
print("ok", len(src.keys()))
"""
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("ok")
