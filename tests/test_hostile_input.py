"""Bad and hostile input: one-line errors with a documented exit code, no traceback, no partial output."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from sinecompress import factorize
from sinecompress.errors import InputError, SineCompressWarning, UsageError
from sinecompress.io.open import open_source
from sinecompress.recipe.schema import load_recipe

from .helpers import WIDE, assert_one_line_error, cli, leftovers, tiny_state, wide_file


def _raw(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header: dict, body: bytes, pad: bool = True):
    blob = json.dumps(header).encode()
    if pad:
        blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)
    return path


def _small(tmp_path):
    p = tmp_path / "ok.safetensors"
    save_file({"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "b.weight": torch.ones(2, 2, dtype=torch.float16)}, str(p))
    return p


def _mutations(path):
    """Each lying-header class, as (name, function(header, body) -> (header, body) or raw bytes)."""
    header, body = _raw(path)
    a, b = header["a.weight"], header["b.weight"]
    first, second = sorted([a, b], key=lambda x: x["data_offsets"][0])
    cases = {
        "truncated": path.read_bytes()[:-5],
        "shorter than 8 bytes": b"\x01\x02",
        "huge header length": struct.pack("<Q", 2**62) + path.read_bytes()[8:],
        "header not json": struct.pack("<Q", 8) + b"{{{{{{{{" + body,
        "header not an object": struct.pack("<Q", 8) + b"[1,2,3] " + body,
    }
    def edit(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return h
    cases["offsets past the end"] = (edit(lambda h: h["a.weight"].update(
        data_offsets=[len(body) - 4, len(body) + 44])), body)
    later = "a.weight" if second is a else "b.weight"
    size = second["data_offsets"][1] - second["data_offsets"][0]
    start = first["data_offsets"][1] - 4  # 4 bytes into the first tensor
    cases["overlapping ranges"] = (edit(lambda h: h[later].update(data_offsets=[start, start + size])), body)
    cases["bad dtype"] = (edit(lambda h: h["a.weight"].update(dtype="F99")), body)
    cases["entry not an object"] = (edit(lambda h: h.__setitem__("a.weight", [1, 2, 3])), body)
    cases["negative dim"] = (edit(lambda h: h["a.weight"].update(shape=[-3, -4])), body)
    cases["shape disagrees with bytes"] = (edit(lambda h: h["a.weight"].update(shape=[3, 5])), body)
    cases["hole between tensors"] = (header, b"")  # built below
    cases["trailing bytes"] = (header, body + b"\0" * 16)
    cases["metadata not strings"] = (edit(lambda h: h.__setitem__("__metadata__", {"x": 1})), body)
    # A hole: move the second tensor 8 bytes later and grow the file to match.
    h = json.loads(json.dumps(header))
    key = "a.weight" if second is a else "b.weight"
    s0, e0 = h[key]["data_offsets"]
    h[key]["data_offsets"] = [s0 + 8, e0 + 8]
    cases["hole between tensors"] = (h, body[:s0] + b"\0" * 8 + body[s0:])
    return cases


def test_valid_file_reads(tmp_path):
    src = open_source(_small(tmp_path))
    assert torch.equal(src.get("a.weight"), torch.arange(12, dtype=torch.float32).reshape(3, 4))


@pytest.mark.parametrize("case", ["truncated", "shorter than 8 bytes", "huge header length", "header not json",
                                  "header not an object", "offsets past the end", "overlapping ranges", "bad dtype",
                                  "entry not an object", "negative dim", "shape disagrees with bytes",
                                  "hole between tensors", "trailing bytes", "metadata not strings"])
def test_lying_headers_are_input_errors(tmp_path, case):
    good = _small(tmp_path)
    spec = _mutations(good)[case]
    bad = tmp_path / "bad.safetensors"
    if isinstance(spec, bytes):
        bad.write_bytes(spec)
    else:
        _write(bad, *spec)
    with pytest.raises(InputError) as e:
        open_source(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_lying_header_cli_exit_3_no_output(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_mutations(_small(tmp_path))["truncated"])
    code, _, err = cli("factorize", bad, "--rank", "1", "--method", "svd", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 3, str(bad))
    assert not (tmp_path / "o.safetensors").exists() and leftovers(tmp_path) == []


def test_index_cannot_point_outside_its_directory(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    wide_file(tmp_path / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"embed.weight": "../outside.safetensors"}}))
    with pytest.raises(InputError, match="not a file in this directory"):
        open_source(d)


_VALID = None


def _valid_bytes() -> bytes:
    global _VALID
    if _VALID is None:
        from safetensors.torch import save

        _VALID = save({"w.weight": torch.arange(24, dtype=torch.float32).reshape(4, 6),
                       "w.bias": torch.arange(4, dtype=torch.bfloat16)}, metadata={"k": "v"})
    return _VALID


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_safetensors_reader(tmp_path, data):
    """Random byte flips, truncations and insertions: the reader returns tensors or raises InputError."""
    raw = bytearray(_valid_bytes())
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "header_flip"]))
    if op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == "insert":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        (n,) = struct.unpack("<Q", bytes(raw[:8]))
        hi = min(len(raw), 8 + n) if op == "header_flip" else len(raw)
        for _ in range(data.draw(st.integers(1, 6))):
            i = data.draw(st.integers(0, hi - 1))
            raw[i] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(bytes(raw))
    try:
        src = open_source(p)
        for name in src.tensors:
            t = src.get(name)
            assert tuple(t.shape) == src.tensors[name].shape
    except InputError:
        pass


def test_fuzz_recipe_loader():
    import yaml
    from hypothesis import given as g2

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                        st.text(max_size=12))
    docs = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                        max_leaves=20)

    @settings(max_examples=150, deadline=None)
    @g2(doc=docs | st.text(max_size=200))
    def check(doc):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "r.yaml"
            p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
            try:
                load_recipe(p)
            except (UsageError, InputError):
                pass

    check()


# ---------------------------------------------------------------------------- weights and settings


def test_nonfinite_target_kept_dense_with_warning(tmp_path):
    sd = tiny_state(**WIDE)
    sd["blocks.1.fc1.weight"][3, 5] = float("nan")
    sd["blocks.1.fc1.weight"][0, 0] = float("inf")
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.warns(SineCompressWarning, match=r"blocks\.1\.fc1: 1 NaN and 1 infinite"):
        s = factorize(tmp_path / "m.safetensors", tmp_path / "o.safetensors", method="svd", rank=4)
    kept = {x["name"]: x["kept_dense"] for x in s["layers"]}
    assert "NaN" in kept["blocks.1.fc1"] and kept["blocks.0.fc1"] is None
    out = load_file(str(tmp_path / "o.safetensors"))
    assert torch.equal(out["blocks.1.fc1.weight"].nan_to_num(), sd["blocks.1.fc1.weight"].nan_to_num())
    assert "blocks.1.fc1.lowrank_u" not in out and "blocks.0.fc1.lowrank_u" in out


@pytest.mark.parametrize("args,needle", [
    (["--rank", "0"], "--rank must be a positive integer"),
    (["--rank", "-3"], "--rank must be a positive integer"),
    (["--rank", "4", "--omega", "-5"], "--omega must be 'auto' or a number from 1e-06 to 1e+06"),
    (["--rank", "4", "--omega", "nan"], "--omega must be 'auto' or a number from 1e-06 to 1e+06"),
    (["--rank", "4", "--omega", "inf"], "--omega must be 'auto' or a number from 1e-06 to 1e+06"),
    (["--rank", "4", "--target", r"blocks\.9\.fc1"], "matches no 2-D weight"),
    (["--rank", "4", "--target", r"blocks\.0\.norm"], "'blocks.0.norm.weight', a 1-D F32 tensor"),
    (["--rank", "4", "--target", r"blocks\.0\.fc1\.bias"], "'blocks.0.fc1.bias', a 1-D F32 tensor"),
    (["--rank", "4", "--exclude", "nothing"], "--exclude 'nothing' matches none"),
    (["--rank", "4", "--max-shard-size", "lots"], "--max-shard-size 'lots' is not a size"),
])
def test_bad_settings_exit_2_one_line(tmp_path, args, needle):
    m = wide_file(tmp_path / "m.safetensors")
    code, _, err = cli("factorize", m, "--method", "sine", "--fit-steps", "1", *args, "--out", tmp_path / "o.safetensors")
    assert_one_line_error(code, err, 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_rank_at_break_even_warns_and_keeps_dense(tmp_path):
    m = wide_file(tmp_path / "m.safetensors")
    # 96x48 layers: break-even k = 96*48/144 = 32.
    code, out, err = cli("factorize", m, "--method", "svd", "--rank", "32", "--out", tmp_path / "o.safetensors", "--json")
    assert code == 0, err
    assert "warning: blocks.0.fc1: rank 32 is at or above break-even (32)" in err
    s = json.loads(out)
    assert all(x["kept_dense"] for x in s["layers"])
    out = load_file(str(tmp_path / "o.safetensors"))
    assert torch.equal(out["blocks.0.fc1.weight"], load_file(str(m))["blocks.0.fc1.weight"])


# ---------------------------------------------------------------------------- pickle


class _Evil:
    """Unpickling this calls open(marker, "w"): a real payload, harmless but observable."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"blocks.0.fc1.weight": torch.randn(8, 8), "payload": _Evil(marker)}, path)
    return path, marker


def test_malicious_pickle_payload_is_real(tmp_path):
    path, marker = _evil_checkpoint(tmp_path)
    torch.load(path, weights_only=False)  # the control: an unrestricted unpickler runs the payload
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("allow", [False, True])
def test_malicious_pickle_never_runs(tmp_path, allow):
    path, marker = _evil_checkpoint(tmp_path)
    code, _, err = cli("factorize", path, "--method", "svd", "--rank", "2", "--out", tmp_path / "o.safetensors",
                       *(["--allow-pickle"] if allow else []))
    assert not marker.exists()
    assert_one_line_error(code, err, 3, str(path), "weights_only=True",
                          "refused to load pickle" if allow else "pickle-based checkpoint refused")
    assert not (tmp_path / "o.safetensors").exists()


def test_plain_pickle_state_dict_with_allow_pickle(tmp_path):
    sd = tiny_state(**WIDE)
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(InputError, match="--allow-pickle"):
        open_source(tmp_path / "m.pt")
    s = factorize(tmp_path / "m.pt", tmp_path / "o.safetensors", method="svd", rank=4, allow_pickle=True)
    save_file(sd, str(tmp_path / "m.safetensors"))
    ref = factorize(tmp_path / "m.safetensors", tmp_path / "r.safetensors", method="svd", rank=4)
    assert [x["rel_error"] for x in s["layers"]] == [x["rel_error"] for x in ref["layers"]]
    a, b = load_file(str(tmp_path / "o.safetensors")), load_file(str(tmp_path / "r.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_pickle_directory_with_allow_pickle(tmp_path):
    sd = tiny_state(**WIDE)
    d = tmp_path / "model"
    d.mkdir()
    keys = list(sd)
    torch.save({k: sd[k] for k in keys[:5]}, d / "pytorch_model-00001-of-00002.bin")
    torch.save({k: sd[k] for k in keys[5:]}, d / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(InputError, match="--allow-pickle"):
        open_source(d)
    src = open_source(d, allow_pickle=True)
    assert list(src.tensors) == keys and all(torch.equal(src.get(k), sd[k]) for k in keys)
