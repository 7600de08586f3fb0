"""Never exit 0 with an unreadable, corrupt or non-finite output; never a traceback for a damaged
compressed file (issue 13: unreadable output, non-finite results, metadata, dtypes, 0x0, diverged fits).

Compressed-file metadata is validated once (``io.format.read_layers``) for ``inflate``, ``report``
and ``load()`` alike, so each variant is tried through all three."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sinecompress
from sinecompress.errors import InputError, SineCompressError

from ._safety import FAST, compressed, readable, refused, sc, snapshot, tiny, tiny_state, warned_ok


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A real compressed file's tensors and its metadata document."""
    c = compressed(tmp_path_factory.mktemp("base"))
    with safe_open(str(c), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(f.metadata()["sinecompress"])
    return tensors, doc


def write_compressed(path, tensors, doc):
    meta = {"format": "pt", "sinecompress": doc if isinstance(doc, str) else json.dumps(doc)}
    save_file(tensors, str(path), metadata=meta)
    return path


def _layer(doc, **change):
    doc = json.loads(json.dumps(doc))
    rec = doc["layers"]["blocks.0.fc1"]
    for k, v in change.items():
        if v is _DROP:
            rec.pop(k)
        else:
            rec[k] = v
    return doc


_DROP = object()
DEEP = "[" * 100_000 + "]" * 100_000
# Each variant of the list: (id, function of the valid document -> the damaged document)
VARIANTS = [
    ("layers-list", lambda d: {**d, "layers": list(d["layers"])}),
    ("layers-string", lambda d: {**d, "layers": "blocks.0.fc1"}),
    ("layers-missing", lambda d: {k: v for k, v in d.items() if k != "layers"}),
    ("record-string", lambda d: {**d, "layers": {**d["layers"], "blocks.0.fc1": "lowrank"}}),
    ("record-null", lambda d: {**d, "layers": {**d["layers"], "blocks.0.fc1": None}}),
    ("kind-missing", lambda d: _layer(d, kind=_DROP)),
    ("kind-unknown", lambda d: _layer(d, kind="fourier")),
    ("dtype-missing", lambda d: _layer(d, dtype=_DROP)),
    ("dtype-Z99", lambda d: _layer(d, dtype="Z99")),
    ("dtype-I8", lambda d: _layer(d, dtype="I8")),
    ("dtype-F16-mismatch", lambda d: _layer(d, dtype="F16")),
    ("shape-wrong", lambda d: _layer(d, shape=[8, 16])),
    ("shape-string", lambda d: _layer(d, shape="16x8")),
    ("shape-3d", lambda d: _layer(d, shape=[16, 8, 1])),
    ("shape-negative", lambda d: _layer(d, shape=[-16, 8])),
    ("shape-huge", lambda d: _layer(d, shape=[10**12, 10**12])),
    ("shape-float", lambda d: _layer(d, shape=[16.0, 8])),
    ("shape-bool", lambda d: _layer(d, shape=[True, 8])),
    ("rank-string", lambda d: _layer(d, rank="2")),
    ("rank-null", lambda d: _layer(d, rank=None)),
    ("rank-huge", lambda d: _layer(d, rank=10**7)),
    ("rank-zero", lambda d: _layer(d, rank=0)),
    ("rank-float", lambda d: _layer(d, rank=2.0)),
    ("linear-rank-string", lambda d: _layer(d, kind="sine", linear_rank="1", omega=10, amplitude="row")),
    ("linear-rank-huge", lambda d: _layer(d, kind="sine", linear_rank=10**7, omega=10)),
    ("omega-string", lambda d: _layer(d, kind="sine", omega="ten")),
    ("omega-null", lambda d: _layer(d, kind="sine", omega=None)),
    ("omega-1e308", lambda d: _layer(d, kind="sine", omega=1e308)),
    ("omega-nan", lambda d: _layer(d, kind="sine", omega=float("nan"))),
    ("omega-negative", lambda d: _layer(d, kind="sine", omega=-1)),
    ("amplitude-unknown", lambda d: _layer(d, kind="sine", omega=10, amplitude="column")),
    ("format-version-2", lambda d: {**d, "format_version": 2}),
    ("format-version-missing", lambda d: {k: v for k, v in d.items() if k != "format_version"}),
    ("document-list", lambda d: [d]),
    ("not-json", lambda d: "{layers: oops"),
    ("deep-json", lambda d: DEEP),
    ("deep-record", lambda d: {**d, "layers": {"blocks.0.fc1": json.loads("[" * 900 + "]" * 900)}}),
    ("extra-layer-without-tensors", lambda d: {**d, "layers": {**d["layers"], "ghost": d["layers"]["blocks.0.fc1"]}}),
]


@pytest.fixture(scope="module")
def variants(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    tensors, doc = base
    made = {}
    for name, change in VARIANTS:
        new = change(doc)
        made[name] = write_compressed(root / f"{name}.safetensors", tensors,
                                      new if isinstance(new, str) else json.dumps(new, allow_nan=True))
    return made


@pytest.mark.parametrize("variant", [v[0] for v in VARIANTS])
def test_damaged_metadata_is_one_line_exit_3_everywhere(variants, tmp_path, variant):
    path = variants[variant]
    keep = snapshot(path)
    out = tmp_path / "dense.safetensors"
    refused(sc("inflate", path, "--out", out), 3, path.name, keep=keep, clean=(tmp_path,), absent=(out,))
    refused(sc("report", path), 3, path.name, keep=keep)
    with pytest.raises(InputError):
        sinecompress.load(path)
    refused(sc("factorize", path, "--out", out, *FAST), 3, path.name, keep=keep, clean=(tmp_path,), absent=(out,))


def test_orphan_factor_tensor_is_refused(base, tmp_path):
    """A factor-named tensor that no layer record owns would reach the dense output as a raw factor."""
    tensors, doc = base
    path = write_compressed(tmp_path / "orphan.safetensors", {**tensors, "stray.sine_u": torch.ones(2, 2)}, doc)
    out = tmp_path / "dense.safetensors"
    refused(sc("inflate", path, "--out", out), 3, "stray.sine_u", clean=(tmp_path,), absent=(out,))
    with pytest.raises(InputError):
        sinecompress.load(path)


def test_inflate_of_a_file_that_also_holds_the_dense_weight(base, tmp_path):
    tensors, doc = base
    path = write_compressed(tmp_path / "both.safetensors", {**tensors, "blocks.0.fc1.weight": torch.ones(16, 8)}, doc)
    out = tmp_path / "dense.safetensors"
    refused(sc("inflate", path, "--out", out), 3, "blocks.0.fc1", clean=(tmp_path,), absent=(out,))


def test_source_holding_a_factor_name_is_refused(tmp_path):
    src = tiny(tmp_path / "m.safetensors", extra={"blocks.0.fc1.sine_u": torch.ones(2, 2)})
    out = tmp_path / "o.safetensors"
    refused(sc("factorize", src, "--out", out, *FAST), 3, "blocks.0.fc1.sine_u", keep=snapshot(src),
            clean=(tmp_path,), absent=(out,))


def test_already_compressed_source_is_refused(tmp_path):
    c = compressed(tmp_path)
    out = tmp_path / "again.safetensors"
    refused(sc("factorize", c, "--out", out, *FAST), 3, "already compressed", keep=snapshot(c), clean=(tmp_path,),
            absent=(out,))


def test_inflate_with_omega_1e308_writes_nothing(base, tmp_path):
    """A sine layer whose ω is out of range (it would give NaN weights) is refused before writing."""
    tensors, doc = base
    g = torch.Generator().manual_seed(0)
    sine = {k: v for k, v in tensors.items() if not k.startswith("blocks.0.fc1.lowrank")}
    sine.update({"blocks.0.fc1.sine_u": torch.randn(16, 2, generator=g), "blocks.0.fc1.sine_v": torch.randn(8, 2, generator=g),
                 "blocks.0.fc1.sine_amp": torch.ones(16)})
    doc = _layer(doc, kind="sine", omega=1e308, amplitude="row")
    path = write_compressed(tmp_path / "w.safetensors", sine, doc)
    out = tmp_path / "dense.safetensors"
    refused(sc("inflate", path, "--out", out), 3, "omega", clean=(tmp_path,), absent=(out,))
    good = write_compressed(tmp_path / "ok.safetensors", sine, _layer(doc, omega=10.0))
    assert sc("inflate", good, "--out", out)[0] == 0
    readable(out)


def test_factors_that_overflow_are_refused_while_writing(base, tmp_path):
    """Valid metadata, finite factors, but a product past float32's range: the writer refuses the result."""
    tensors, doc = base
    huge = {**tensors, "blocks.0.fc1.lowrank_u": torch.full((16, 2), 1e30), "blocks.0.fc1.lowrank_v": torch.full((8, 2), 1e30)}
    path = write_compressed(tmp_path / "big.safetensors", huge, doc)
    out = tmp_path / "dense.safetensors"
    refused(sc("inflate", path, "--out", out), 3, "non-finite", clean=(tmp_path,), absent=(out,))
    with pytest.raises(SineCompressError):
        sinecompress.inflate(path, out)
    assert not out.exists()


def _raw(path, name):
    """A tensor's bytes exactly as stored in a safetensors file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8:8 + n])[name]["data_offsets"]
    return data[8 + n + start:8 + n + end]


ODD_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16,
              "U32": torch.uint32, "U64": torch.uint64}


def test_every_dtype_is_copied_byte_for_byte(tmp_path):
    """FP8 scales and unsigned tensors beside the targets go through factorize and inflate untouched."""
    g = torch.Generator().manual_seed(0)
    extra = {f"scales.{k}": torch.randint(0, 120, (5, 3), generator=g, dtype=torch.uint8).view(-1)[:15]
             .to(torch.float32).reshape(5, 3).to(dt) for k, dt in ODD_DTYPES.items()}
    src = tiny(tmp_path / "m.safetensors", extra=extra)
    out, dense = tmp_path / "o.safetensors", tmp_path / "d.safetensors"
    warned_ok(sc("factorize", src, "--out", out, *FAST))
    warned_ok(sc("inflate", out, "--out", dense))
    for name in extra:
        assert _raw(out, name) == _raw(src, name), name
        assert _raw(dense, name) == _raw(src, name), name
    assert _raw(dense, "steps") == _raw(src, "steps")


@pytest.mark.parametrize("shape", [(0, 0), (0, 8), (8, 0)])
def test_a_targeted_empty_weight(tmp_path, shape):
    src = tiny(tmp_path / "m.safetensors", extra={"empty.weight": torch.zeros(shape)})
    out = tmp_path / "o.safetensors"
    code, _, err = sc("factorize", src, "--out", out, "--target", "empty", "--target", "blocks.0.fc1", *FAST)
    if code == 0:  # kept dense with a warning, copied as it is
        assert any("empty" in w for w in warned_ok((code, "", err)))
        assert readable(out)["empty.weight"].shape == shape
    else:
        refused((code, "", err), 2, "empty", clean=(tmp_path,), absent=(out,))


def test_empty_weights_are_not_targets_by_default(tmp_path):
    src = tiny(tmp_path / "m.safetensors", extra={"empty.weight": torch.zeros(0, 0)})
    out = tmp_path / "o.safetensors"
    warned_ok(sc("factorize", src, "--out", out, *FAST))
    assert readable(out)["empty.weight"].shape == (0, 0)


@pytest.mark.parametrize("omega", ["1e6", "1e-6"])
def test_diverged_fit_is_kept_dense_with_a_warning(tmp_path, omega):
    """Weights near float32's limit make every sine fit non-finite: the layer stays dense, byte for byte."""
    sd = tiny_state()
    sd["blocks.0.fc1.weight"] = torch.full((16, 8), 3e38) * torch.sign(torch.randn(16, 8))
    src = tmp_path / "m.safetensors"
    save_file(sd, str(src))
    out = tmp_path / "o.safetensors"
    warnings = warned_ok(sc("factorize", src, "--out", out, "--rank", "2", "--omega", omega, "--fit-steps", "3",
                            "--no-calib"))
    assert any("blocks.0.fc1" in w for w in warnings), warnings
    assert _raw(out, "blocks.0.fc1.weight") == _raw(src, "blocks.0.fc1.weight")
    readable(out)
    assert not [p for p in tmp_path.iterdir() if ".sc." in p.name]


@pytest.mark.slow
def test_diverged_fit_through_workers(tmp_path):
    sd = tiny_state()
    sd["blocks.0.fc1.weight"] = torch.full((16, 8), 3e38)
    src = tmp_path / "m.safetensors"
    save_file(sd, str(src))
    out = tmp_path / "o.safetensors"
    # (the workers print their warnings on this process's own stderr, which sc() does not capture)
    warned_ok(sc("factorize", src, "--out", out, "--rank", "2", "--omega", "1e6", "--fit-steps", "3", "--workers", "2"))
    assert _raw(out, "blocks.0.fc1.weight") == _raw(src, "blocks.0.fc1.weight")
    assert not [q for q in tmp_path.iterdir() if ".sc." in q.name]


@pytest.mark.parametrize("args", [("--rank", "6"), ("--rank", "2", "--target", "empty")])
def test_a_run_that_keeps_every_layer_dense_still_writes(tmp_path, args):
    src = tiny(tmp_path / "m.safetensors", extra={"empty.weight": torch.zeros(0, 0)})
    out = tmp_path / "o.safetensors"
    warnings = warned_ok(sc("factorize", src, "--out", out, "--method", "svd", *args))
    assert warnings
    assert _raw(out, "blocks.0.fc1.weight") == _raw(src, "blocks.0.fc1.weight")
