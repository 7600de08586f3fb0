"""Property-based attacks (hypothesis), issue 13: generated compressed-file metadata, safetensors headers,
recipes and adapter configs. Whatever is generated, every command either succeeds with a readable, finite
output or fails with its documented exit code and one line; never a traceback, never a partial output or
temporary file, never a change to its inputs. ``load()`` returns or raises the project's own errors."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import sinecompress
from sinecompress.errors import SineCompressError

from ._safety import FAST, compressed, leftovers, readable, refused, sc, snapshot, tiny

# 25 examples each keeps the suite fast; SAFETY_EXAMPLES=500 for a deeper hunt.
PROPS = settings(max_examples=int(os.environ.get("SAFETY_EXAMPLES", 25)), deadline=None,
                 suppress_health_check=list(HealthCheck))

# JSON values an attacker would try in any field
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, -1, 10**7, 10**12, 2**63]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, 5e-324, -0.0]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12),
                    st.sampled_from(["F32", "F16", "BF16", "I8", "Z99", "sine", "lowrank", "row", "scalar", "auto"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _outcome(result, ok_codes, error_codes, culprit: str, work: Path, keep: dict, out: Path,
             source: Path | None = None):
    """The one property: success with a readable output, or a one-line documented error naming ``culprit``,
    and either way inputs untouched and nothing left behind."""
    code = result[0]
    if code in ok_codes:
        assert "Traceback" not in result[2], result[2]
        if out is not None:
            readable(out, source)
    else:
        refused(result, error_codes, culprit, keep=keep, clean=(work,), absent=(out,) if out else ())
    assert snapshot(*[Path(k) for k in keep]) == keep
    assert leftovers(work) == []


# ------------------------------------------------------------------------------ compressed-file metadata


@pytest.fixture(scope="module")
def base():
    with tempfile.TemporaryDirectory() as d:
        c = compressed(Path(d))
        with safe_open(str(c), framework="pt") as f:
            yield {k: f.get_tensor(k).clone() for k in f.keys()}, json.loads(f.metadata()["sinecompress"])


FIELDS = ["kind", "shape", "dtype", "rank", "linear_rank", "omega", "amplitude", "name"]
SPECIAL = {"shape": st.one_of(st.lists(NUMBERS, max_size=3), VALUES), "kind": st.sampled_from(["sine", "lowrank"]),
           "omega": NUMBERS}


@st.composite
def damaged_doc(draw, doc):
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        layer = draw(st.sampled_from([*doc["layers"], "ghost", ""]))
        rec = doc["layers"].setdefault(layer, {}) if isinstance(doc["layers"].get(layer, {}), dict) else {}
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            rec.pop(field, None)
        else:
            rec[field] = draw(SPECIAL.get(field, VALUES))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["layers", "format_version", "plan"]))] = draw(VALUES)
    return doc


@PROPS
@given(data=st.data())
def test_generated_metadata(base, data):
    tensors, doc = base
    damaged = data.draw(damaged_doc(doc))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        path = d / "c.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt", "sinecompress": json.dumps(damaged)})
        keep = snapshot(path)
        out = d / "dense.safetensors"
        _outcome(sc("inflate", path, "--out", out), (0,), 3, "c.safetensors", d, keep, out)
        _outcome(sc("report", path), (0,), 3, "c.safetensors", d, keep, None)
        try:
            sinecompress.load(path)
        except SineCompressError:
            pass


# ------------------------------------------------------------------------------------- safetensors headers

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "U16": 2}


@st.composite
def raw_safetensors(draw) -> bytes:
    """A file that is valid, or valid but for one lie."""
    n = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(["a.weight", "a.bias", "b.weight", "b.sine_u", "c", "d.weight"]) |
                          st.text(min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
    header, data, offset = {}, b"", 0
    for name in names:
        dtype = draw(st.sampled_from(list(DTYPES)))
        shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3))
        size = DTYPES[dtype]
        for s in shape:
            size *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        data += draw(st.binary(min_size=size, max_size=size)) if size <= 64 else bytes(size)
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), st.dictionaries(st.text(max_size=5),
                                                                                             VALUES, max_size=2)))
    lie = draw(st.sampled_from(["none", "none", "dtype", "shape", "offsets", "truncate", "extra", "length", "entry",
                                "utf8"]))
    victim = header[names[0]]
    if lie == "dtype":
        victim["dtype"] = draw(st.sampled_from(["Z99", "F4", "", "f32"]) | VALUES)
    elif lie == "shape":
        victim["shape"] = draw(st.one_of(st.lists(NUMBERS, max_size=3), VALUES))
    elif lie == "offsets":
        victim["data_offsets"] = draw(st.one_of(st.lists(NUMBERS, max_size=3), VALUES))
    elif lie == "entry":
        header[names[0]] = draw(VALUES)
    blob = json.dumps(header, allow_nan=True).encode()
    if lie == "utf8":
        blob = blob.replace(b'"', b'"\xff', 1)
    length = len(blob)
    if lie == "length":
        length = draw(st.sampled_from([0, 1, length + 1, 2**63, 2**64 - 1, 100_000_001]))
    raw = struct.pack("<Q", length) + blob + data
    if lie == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif lie == "extra":
        raw += draw(st.binary(min_size=1, max_size=16))
    return raw


@PROPS
@given(raw=raw_safetensors())
@example(raw=b'G\x00\x00\x00\x00\x00\x00\x00{"a.weight": {"dtype": "F16", "shape": [1, 1], "data_offsets": [0, 2]}}'
             b'\x00|')  # an F16 +inf weight in the source: too small to compress, copied through as it was
def test_generated_safetensors_headers(raw):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        path = d / "m.safetensors"
        path.write_bytes(raw)
        keep = snapshot(path)
        out = d / "o.safetensors"
        # exit 2 is a fair answer for a valid file with nothing to compress (or a factor-like name)
        _outcome(sc("factorize", path, "--out", out, *FAST, "--no-calib"), (0,), (2, 3), "m.safetensors", d, keep,
                 out if out.exists() else None, source=path)
        _outcome(sc("report", path), (0,), (2, 3), "m.safetensors", d, keep, None)
        _outcome(sc("inflate", path, "--out", out.with_name("i.safetensors")), (), 3, "m.safetensors", d, keep, None)
        try:
            sinecompress.load(path)
        except SineCompressError:
            pass


# ------------------------------------------------------------------------------------------------- recipes

RECIPE_KEYS = {
    "defaults": ["method", "rank", "param_ratio", "omega", "fit_steps", "allocate", "sequential", "bogus"],
    "calibration": ["enabled", "source", "samples", "seq_len"],
    "finetune": ["steps", "lr", "seed"],
    "gates": ["max_param_ratio", "max_rel_error", "min_cosine", "bogus"],
}
TOP = ["seed", "device", "max_shard_size", "workers", "exclude", "targets", "version", "bogus"]


@st.composite
def recipe_doc(draw, model: str, output: str) -> dict:
    doc = {"version": 1, "model": model, "output": output, "defaults": {"method": "svd", "rank": 2}}
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            section = draw(st.sampled_from(list(RECIPE_KEYS)))
            doc.setdefault(section, {}) if isinstance(doc.get(section), dict) else None
            if isinstance(doc.get(section, {}), dict):
                doc.setdefault(section, {})[draw(st.sampled_from(RECIPE_KEYS[section]))] = draw(VALUES)
        else:
            key = draw(st.sampled_from(TOP))
            if key == "targets":
                doc[key] = draw(st.lists(st.fixed_dictionaries({"match": st.sampled_from(["blocks.*", ".*", "(", "x"])},
                                                               optional={"rank": VALUES, "omega": VALUES}), max_size=2)
                                | VALUES)
            elif key == "exclude":
                doc[key] = draw(st.lists(st.sampled_from(["blocks.0.fc1", "(", "nothing", ".*"]), max_size=2) | VALUES)
            else:
                doc[key] = draw(VALUES)
    return doc


@PROPS
@given(data=st.data())
def test_generated_recipes(data):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = tiny(d / "m.safetensors")
        out = d / "o.safetensors"
        doc = data.draw(recipe_doc(str(src), str(out)))
        recipe = d / "r.yaml"
        try:
            recipe.write_text(yaml.safe_dump(doc, allow_unicode=True))
        except (yaml.YAMLError, ValueError):
            return
        keep = snapshot(src, recipe)
        code, _, err = sc("recipe", "validate", recipe)
        if code:
            refused((code, "", err), 2, "r.yaml", keep=keep, clean=(d,))
        # settings that only cost time are pinned: a generated recipe must not fit for minutes or spawn workers
        code, _, err = sc("factorize", "--recipe", recipe, "--fit-steps", "2", "--workers", "1", "--steps", "0")
        if code in (0, 1):
            assert "Traceback" not in err
            readable(out)
        else:
            refused((code, "", err), (2, 3), keep=keep, clean=(d,), absent=(out,), after_plan=True)
        assert snapshot(src, recipe) == keep


# ------------------------------------------------------------------------------------------ adapter configs

ADAPTER_KEYS = ["peft_type", "r", "lora_alpha", "alpha_pattern", "rank_pattern", "use_dora", "use_rslora",
                "target_modules", "sinecompress"]
PATTERNS = st.dictionaries(st.sampled_from(["blocks.0.fc1", "fc1", ".*", "(", "(a|aa)+b", "blocks\\.\\d+\\.fc1"]),
                           VALUES, max_size=2)


@st.composite
def adapter_config(draw) -> dict:
    cfg = {"peft_type": draw(st.sampled_from(["LORA", "SINE_LORA"])), "r": 1, "lora_alpha": 2}
    if cfg["peft_type"] == "SINE_LORA":
        cfg["sinecompress"] = {"kind": draw(st.sampled_from(["sine_lora", "sine_dora"])), "omega": 10.0}
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(ADAPTER_KEYS + ["sinecompress.omega", "sinecompress.omega_pattern",
                                                   "sinecompress.kind"]))
        value = draw(PATTERNS if key.endswith("pattern") and draw(st.booleans()) else VALUES)
        if key.startswith("sinecompress."):
            if isinstance(cfg.get("sinecompress"), dict):
                cfg["sinecompress"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    return cfg


@PROPS
@given(cfg=adapter_config(), dora=st.booleans())
def test_generated_adapter_configs(cfg, dora):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = tiny(d / "m.safetensors")
        a = d / "adapter"
        a.mkdir()
        (a / "adapter_config.json").write_text(json.dumps(cfg, allow_nan=True))
        g = torch.Generator().manual_seed(0)
        tensors = {"base_model.model.blocks.0.fc1.lora_A.weight": torch.randn(1, 8, generator=g),
                   "base_model.model.blocks.0.fc1.lora_B.weight": torch.randn(16, 1, generator=g)}
        if dora:
            tensors["base_model.model.blocks.0.fc1.lora_magnitude_vector"] = torch.rand(16, generator=g) + 0.5
        save_file(tensors, str(a / "adapter_model.safetensors"))
        keep = snapshot(src, a)
        out = d / "merged.safetensors"
        _outcome(sc("adapter", "merge", src, a, "--out", out), (0,), 3, "adapter", d, keep, out)
