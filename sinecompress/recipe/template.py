"""The commented recipe template written by ``recipe init``."""

TEMPLATE = """\
# sinecompress recipe (schema: docs/recipes.md). Run it with:
#   sinecompress recipe validate THIS.yaml
#   sinecompress recipe show THIS.yaml           # which layers each rule matches; compresses nothing
#   sinecompress factorize --recipe THIS.yaml    # command-line flags override the values below
# Exit codes: 0 ok, 1 a gate failed (output still written), 2 recipe/usage error, 3 unreadable input,
# 4 internal error, 5 output not writable (README: Exit codes).
version: 1

# What to compress: a .safetensors file, a (sharded) Hugging Face model directory, a .gguf file,
# example:minilm or example:smollm2.
model: example:minilm
# Where to write: a .safetensors file for a file model, a directory for a directory or GGUF model.
output: out/minilm-sine

# Settings for every targeted layer that no rule below overrides.
defaults:
  method: sine          # sine (a ⊙ sin(ω·UVᵀ) + low-rank linear part), svd (truncated SVD) or wsvd (whitened SVD)
  rank: 64              # total factor rank per layer; or param_ratio: 0.25 (fraction of the dense layer)
  omega: auto           # sine frequency ω, or auto: 100 when compressing, where ω is a gauge
  fit_steps: 300        # optimisation steps of each layer's sine fit
  # fallback: false     # keep every sine layer sine, even where whitened SVD fits it better
  # allocate: sensitivity  # with param_ratio: spread the same budget by measured sensitivity

# Ordered rules: a regex matched in full against module names (tensor name minus '.weight').
# The FIRST rule that matches a layer sets its settings; unset fields come from `defaults`.
# Only layers some rule matches are compressed.
targets:
  - match: 'encoder\\.layer\\.\\d+\\.intermediate\\.dense'
    rank: 96
  - match: 'encoder\\.layer\\.\\d+\\.output\\.dense'

# Regexes (full match) of layers to leave dense even if a rule matches them.
exclude: []

# Calibration: fit what each layer sees on real inputs (default on for models with a tokenizer).
calibration:
  # source: calib.txt   # text lines, JSONL {"text": ...} or a .safetensors file of input tensors
  samples: auto         # auto: up to 2048 texts for a global tune of unpacked text, else 256
  seq_len: 128
  # pack: true          # join the texts into full rows of seq_len tokens; default: on for causal LMs

# Fine-tune against the original: block (each block against the original block's outputs, or with
# target: model the original model's; bounded memory), global (all layers against the whole model;
# everything in memory) or none.
finetune:
  mode: block
  steps: auto           # auto: global 200 on CPU, 1000 on CUDA; block 128, 200 per block
  rows: 4               # calibration rows per block-tuning step

seed: 0                 # the same recipe and seed give byte-identical output on the same machine
device: auto            # auto (CUDA when available), cpu or cuda

# Quality gates, checked after the output is written; a failing gate exits with code 1.
gates:
  max_param_ratio: 0.5  # factor params / dense params, over the targeted layers
  min_cosine: 0.9       # encoders: mean cosine of mean-pooled last hidden states vs the original
  # max_rel_error: 0.95        # worst per-layer relative weight error (weight-only fits; calibrated fits
  #                            #   minimise the error on real inputs, and their weight error may exceed 1)
  # max_perplexity_ratio: 1.5  # causal LMs: perplexity on built-in held-out text / the original's
"""
