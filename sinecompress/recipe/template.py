"""The commented recipe template written by ``recipe init``."""

TEMPLATE = """\
# sinecompress recipe (schema: docs/recipes.md). Run it with:
#   sinecompress recipe validate THIS.yaml
#   sinecompress recipe show THIS.yaml           # which layers each rule matches; compresses nothing
#   sinecompress factorize --recipe THIS.yaml    # command-line flags override the values below
# Exit codes: 0 ok, 1 a gate failed (output still written), 2 recipe/usage error, 3 unreadable input.
version: 1

# What to compress: a .safetensors file, a (sharded) Hugging Face model directory, or example:minilm.
model: example:minilm
# Where to write: a .safetensors file for a file model, a directory for a directory model.
output: out/minilm-sine

# Settings for every targeted layer that no rule below overrides.
defaults:
  method: sine          # sine (a ⊙ sin(ω·UVᵀ) + low-rank linear part) or svd (truncated SVD baseline)
  rank: 64              # total factor rank per layer; or param_ratio: 0.25 (fraction of the dense layer)
  omega: 100            # sine frequency ω
  fit_steps: 300        # optimisation steps of each layer's sine fit
  # allocate: sensitivity  # with param_ratio: spread the same budget by measured sensitivity
  # sequential: true       # fit each layer to the compressed earlier layers' outputs (default: only without fine-tune)

# Ordered rules: a regex matched in full against module names (tensor name minus '.weight').
# The FIRST rule that matches a layer sets its settings; unset fields come from `defaults`.
# Only layers some rule matches are compressed.
targets:
  - match: 'encoder\\.layer\\.\\d+\\.intermediate\\.dense'
    rank: 96
  - match: 'encoder\\.layer\\.\\d+\\.output\\.dense'

# Regexes (full match) of layers to leave dense even if a rule matches them.
exclude: []

# Random seed: the same recipe and seed give byte-identical output on the same machine.
finetune:
  seed: 0

# Quality gates, checked after the output is written; a failing gate exits with code 1.
gates:
  max_param_ratio: 0.5  # factor params / dense params, over the targeted layers
  max_rel_error: 0.95   # worst per-layer relative weight error ‖Ŵ−W‖/‖W‖
  min_cosine: 0.5       # mean cosine of mean-pooled last hidden states vs the original (HF models only)
"""
