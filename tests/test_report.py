import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sinecompress import factorize
from sinecompress.adapters import AdapterConfig, inject_adapters, iter_adapters, save_adapter
from sinecompress.errors import InputError, UsageError
from sinecompress.report import spectra
from sinecompress.report.report import report

from .helpers import assert_one_line_error, cli, tiny_file

TARGETS = [r"blocks\.\d+\.fc\d"]

# The schema is pinned here literally (not imported), so a change to it fails this test: bump
# schema_version and update docs/report.md when it must change.
REPORT_KEYS = {"schema_version", "tool_version", "source", "against", "input_kind", "tolerance", "seconds",
               "params_before", "params_after", "compression_rate", "model_params_before",
               "model_params_after", "model_compression_rate", "bytes_on_disk", "bytes_original",
               "mean_rel_error", "activation_error", "layers"}
LAYER_KEYS = {"name", "kind", "shape", "dtype", "rank", "linear_rank", "omega", "params_dense",
              "params_factored", "compression_rate", "numerical_rank", "effective_rank", "stable_rank",
              "rel_error", "fit_rel_error", "activation_error", "keep", "spectra"}
SPECTRA_KEYS = {"original", "weight", "uv", "sine"}
SPECTRUM_KEYS = {"exact", "numerical_rank", "numerical_rank_is_lower_bound", "effective_rank", "stable_rank",
                 "sigma_max", "tolerance", "singular_values"}
KEEP_KEYS = {"rank", "params", "energy", "rel_error"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    dense = tiny_file(d / "dense.safetensors", width=32, hidden=64, head=True)
    comp = d / "comp.safetensors"
    summary = factorize(dense, comp, rank=4, omega=100.0, targets=TARGETS, fit_steps=40, seed=0)
    return {"dir": d, "dense": dense, "comp": comp, "summary": summary}


def test_compressed_report_schema_and_sine_rank(ckpts):
    rep = report(ckpts["comp"], against=ckpts["dense"])
    assert set(rep) == REPORT_KEYS and rep["schema_version"] == 1
    assert rep["input_kind"] == "compressed"
    names = [r["name"] for r in rep["layers"]]
    assert names == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"]
    for layer in rep["layers"]:
        assert set(layer) == LAYER_KEYS
        assert set(layer["spectra"]) == SPECTRA_KEYS
        for s in layer["spectra"].values():
            assert set(s) == SPECTRUM_KEYS
        for k in layer["keep"]:
            assert set(k) == KEEP_KEYS
        assert layer["kind"] == "sine" and layer["rank"] == 4 and layer["omega"] == 100.0
        assert layer["spectra"]["uv"]["numerical_rank"] == layer["rank"] - layer["linear_rank"]
        assert layer["numerical_rank"] > layer["rank"]  # the sine raised the rank
        assert layer["spectra"]["sine"]["numerical_rank"] > layer["rank"]
        # the error against the original agrees with the one factorize measured while fitting
        assert layer["rel_error"] == pytest.approx(layer["fit_rel_error"], abs=1e-4)
        m, n = layer["shape"]
        assert layer["params_dense"] == m * n and layer["params_factored"] == 4 * (m + n) + m
    s = ckpts["summary"]
    for key in ("params_before", "params_after", "model_params_before", "model_params_after"):
        assert rep[key] == s[key], key
    assert rep["compression_rate"] == pytest.approx(s["compression_rate"])
    assert rep["bytes_on_disk"] == ckpts["comp"].stat().st_size
    assert rep["bytes_original"] == ckpts["dense"].stat().st_size
    json.dumps(rep)  # serialisable as is


def test_dense_report_shows_what_rank_k_keeps(ckpts):
    rep = report(ckpts["dense"], rank=[2, 8])
    assert rep["input_kind"] == "dense"
    # default selection, as factorize's: 2-D weights minus embeddings, norms and (maybe tied) heads
    assert [r["name"] for r in rep["layers"]] == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"]
    assert rep["params_after"] == rep["params_before"] and rep["compression_rate"] == 1.0
    w = load_file(str(ckpts["dense"]))["blocks.0.fc1.weight"].double()
    s2 = torch.linalg.svdvals(w) ** 2
    layer = rep["layers"][0]
    assert layer["numerical_rank"] == 32 and layer["spectra"]["original"] is None
    assert [k["rank"] for k in layer["keep"]] == [2, 8]
    assert layer["keep"][1]["energy"] == pytest.approx(float(s2[:8].sum() / s2.sum()), abs=1e-5)
    assert layer["keep"][1]["params"] == 8 * (64 + 32)


def test_large_layers_get_partial_spectra_unless_exact(ckpts, monkeypatch):
    monkeypatch.setattr(spectra, "EXACT_MAX_DIM", 16)  # every 32/64-wide test layer now counts as "large"
    rep = report(ckpts["comp"], against=ckpts["dense"], top=8, rank=[2])
    for layer in rep["layers"]:
        w = layer["spectra"]["weight"]
        assert not w["exact"] and len(w["singular_values"]) == 8
        assert w["numerical_rank_is_lower_bound"] and layer["numerical_rank"] == 8
        assert layer["effective_rank"] is None and layer["stable_rank"] > 0
        assert layer["spectra"]["uv"]["numerical_rank"] == 2  # rank-2 phase: the partial spectrum sees it
    ex = report(ckpts["comp"], against=ckpts["dense"], top=8, rank=[2], exact=True)
    assert all(r["spectra"]["weight"]["exact"] and r["effective_rank"] for r in ex["layers"])
    assert [r["rel_error"] for r in ex["layers"]] == [r["rel_error"] for r in rep["layers"]]


def test_layers_regex_narrows_and_is_validated(ckpts):
    rep = report(ckpts["comp"], layers=r"blocks\.1\..*")
    assert [r["name"] for r in rep["layers"]] == ["blocks.1.fc1", "blocks.1.fc2"]
    assert rep["params_before"] == 64 * 32 * 2
    with pytest.raises(UsageError, match="matches no layer"):
        report(ckpts["comp"], layers="fc1")  # full match: 'fc1' is not a module name
    with pytest.raises(UsageError, match="not a valid regular expression"):
        report(ckpts["comp"], layers="(")
    # an explicit pattern may pick a layer the default leaves out
    assert [r["name"] for r in report(ckpts["dense"], layers="embed")["layers"]] == ["embed"]


def test_against_must_match(ckpts, tmp_path):
    with pytest.raises(InputError, match="dense original"):
        report(ckpts["comp"], against=ckpts["comp"])
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.fc1.weight": torch.zeros(64, 16)}, str(other))
    with pytest.raises(InputError, match=r"blocks\.0\.fc1"):
        report(ckpts["comp"], against=other)


def test_calib_needs_the_original(ckpts):
    with pytest.raises(UsageError, match="--calib needs --against"):
        report(ckpts["comp"], calib="builtin")


def test_activation_error_on_real_minilm(tmp_path):
    """With --calib the report weighs each layer's error by what the original model feeds it."""
    from sinecompress.io.examples import example_dir

    comp = tmp_path / "c.safetensors"
    factorize(example_dir("minilm") / "model.safetensors", comp, method="svd", rank=32,
              targets=[r"encoder\.layer\.0\.(intermediate|output)\.dense"])
    rep = report(comp, against="example:minilm", calib="builtin")
    acts = [r["activation_error"] for r in rep["layers"]]
    assert len(acts) == 2 and all(0 < a < 1 for a in acts)
    assert rep["activation_error"] == pytest.approx(sum(acts) / 2, abs=1e-6)
    # Weight error and activation error are different measures of the same layers.
    assert any(abs(a - r["rel_error"]) > 1e-3 for a, r in zip(acts, rep["layers"]))


def test_cli_json_on_stdout_table_on_stderr(ckpts):
    code, out, err = cli("report", ckpts["comp"], "--against", ckpts["dense"], "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert set(rep) == REPORT_KEYS and len(rep["layers"]) == 4
    assert "blocks.0.fc1" in err and "rel. error" in err  # the table went to stderr
    assert "Traceback" not in err


def test_cli_table_on_stdout_without_json(ckpts):
    rc, out, _ = cli("report", ckpts["dense"])
    assert rc == 0 and "rank-k keeps" in out and "blocks.0.fc1" in out


@pytest.mark.parametrize("make, code, words", [
    (lambda d: d / "missing.safetensors", 3, "no such file"),
    (lambda d: (d / "junk.safetensors").write_bytes(b"\x01\x02") and d / "junk.safetensors", 3, "junk.safetensors"),
])
def test_cli_bad_input_is_one_line(tmp_path, make, code, words):
    rc, _, err = cli("report", make(tmp_path))
    assert assert_one_line_error(rc, err, code, words).startswith("error:")


def test_cli_against_wrong_shape_exit_3(ckpts, tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.fc1.weight": torch.zeros(64, 16)}, str(other))
    rc, _, err = cli("report", ckpts["comp"], "--against", other)
    assert_one_line_error(rc, err, 3, "blocks.0.fc1")


def test_plot_writes_png(ckpts, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    out = tmp_path / "spectra.png"
    rc, _, err = cli("report", ckpts["comp"], "--against", ckpts["dense"], "--plot", out)
    assert rc == 0 and "wrote" in err
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not [p for p in tmp_path.iterdir() if p.name != "spectra.png"]  # no temp file left behind


def test_plot_without_matplotlib_says_how_to_install(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "x.png"
    for argv in (["report", ckpts["comp"], "--plot", out], ["spectrum", "--plot", out]):
        code, _, err = cli(*argv)
        assert_one_line_error(code, err, 2, "matplotlib", "sinecompress[plot]")
    assert not out.exists()


def test_adapter_dir_reports_the_adapter_deltas(tmp_path):
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.ModuleDict({"fc1": nn.Linear(32, 64), "fc2": nn.Linear(64, 32)})])
    inject_adapters(model, AdapterConfig(kind="lora", r=3), [r"blocks\.0\.fc[12]"])
    torch.manual_seed(0)
    with torch.no_grad():
        for _, m in iter_adapters(model):
            m.lora_B.weight.normal_(0, 0.1)  # B starts at zero: give the deltas their full rank
    save_adapter(model, tmp_path / "ad")
    rep = report(tmp_path / "ad")
    assert set(rep) == REPORT_KEYS and rep["input_kind"] == "adapter"
    assert [(r["name"], r["shape"], r["numerical_rank"]) for r in rep["layers"]] == [
        ("blocks.0.fc1", [64, 32], 3), ("blocks.0.fc2", [32, 64], 3)]
    assert all(set(r) == LAYER_KEYS for r in rep["layers"])


def test_spectrum_cli(ckpts):
    rc, out, err = cli("spectrum", "--shape", "64x48", "--rank", "3", "--omegas", "1,10,100", "--json")
    assert rc == 0, err
    sw = json.loads(out)
    ranks = [p["numerical_rank"] for p in sw["omegas"]]
    assert sw["uv"]["numerical_rank"] == 3 and ranks[0] < ranks[-1]
    rc, out, err = cli("spectrum", ckpts["comp"], "--layer", "blocks.0.fc1", "--omegas", "10,100", "--json")
    assert rc == 0, err
    sw = json.loads(out)
    assert sw["layer_omega"] == 100.0 and sw["rank"] == 2 and sw["shape"] == [64, 32]
    rc, out, _ = cli("spectrum", ckpts["dense"], "--layer", "blocks.0.fc1", "--rank", "4", "--json")
    assert rc == 0 and json.loads(out)["uv"]["numerical_rank"] == 4


@pytest.mark.parametrize("args, words", [
    (["--shape", "64by48"], "--shape"),
    (["--omegas", "1,-5"], "--omegas"),
    (["--shape", "8x8", "--rank", "9"], "exceeds"),
    (["--layer", "x"], "needs a checkpoint"),
])
def test_spectrum_cli_usage_errors(args, words):
    rc, _, err = cli("spectrum", *args)
    assert_one_line_error(rc, err, 2, words)


def test_spectrum_unknown_layer(ckpts):
    rc, _, err = cli("spectrum", ckpts["comp"], "--layer", "nope")
    assert_one_line_error(rc, err, 2, "nope")
