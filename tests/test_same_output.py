"""The Python API, the command line and a recipe, given the same settings, write the same bytes.

The API run uses the older keyword names (``steps``, ``ft_steps``) on purpose: they must mean what
``--fit-steps`` and ``--steps`` mean. A recipe's output differs only by its own record (the recipe's text
and hash, in the metadata) and by stating its layers as rules; every tensor byte is the same.
"""

from __future__ import annotations

import json
import struct
import textwrap

from sinecompress import factorize
from sinecompress.io.format import META_KEY

from .helpers import cli

TARGET = r"blocks\.\d+\.fc[12]"
MLP = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"


def split(path):
    """(tensor header without metadata, sinecompress document, tensor bytes) of a .safetensors file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    return header, json.loads(meta[META_KEY]), data[8 + n:]


def as_rules(doc):
    """The document with the layers' selection written as the recipe writes it (one rule per target)."""
    doc = json.loads(json.dumps(doc))
    doc.pop("recipe", None)
    plan = doc["plan"]
    plan["rules"] = [{"match": t, "method": None, "rank": None, "param_ratio": None, "omega": None}
                     for t in plan["targets"]]
    for layer in plan["layers"]:
        layer["rule"] = 0 if len(plan["targets"]) == 1 else layer["rule"]
    return doc


def assert_same_weights(a, b):
    """Same tensors byte for byte, same layer records and plan; metadata may differ only by the recipe."""
    ha, da, ta = split(a)
    hb, db, tb = split(b)
    assert ha == hb and ta == tb
    assert as_rules(da) == as_rules(db)


def recipe(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def test_weight_only_runs_write_the_same_bytes(tiny_file, tmp_path):
    api, by_cli, by_recipe = tmp_path / "api.safetensors", tmp_path / "cli.safetensors", tmp_path / "rec.safetensors"
    factorize(tiny_file, api, method="sine", rank=4, omega=30.0, steps=5, seed=3, targets=[TARGET])
    code, _, err = cli("factorize", tiny_file, "--method", "sine", "--rank", "4", "--omega", "30", "--fit-steps", "5",
                       "--seed", "3", "--target", TARGET, "--out", by_cli)
    assert code == 0, err
    assert api.read_bytes() == by_cli.read_bytes()
    p = recipe(tmp_path, f"""
        version: 1
        model: {tiny_file}
        output: {by_recipe}
        defaults: {{method: sine, rank: 4, omega: 30, fit_steps: 5}}
        targets:
          - match: '{TARGET}'
        seed: 3
        """)
    code, _, err = cli("factorize", "--recipe", p)
    assert code == 0, err
    assert_same_weights(api, by_recipe)
    assert split(by_recipe)[1]["recipe"]["text"] == p.read_text()


def test_calibrated_fine_tuned_runs_write_the_same_bytes(tiny_bert_dir, tmp_path):
    # one output name in three places: the model card (README.md) names its directory
    api, by_cli, by_recipe = tmp_path / "api" / "out", tmp_path / "cli" / "out", tmp_path / "rec" / "out"
    for d in (api, by_cli, by_recipe):
        d.parent.mkdir()
    s = factorize(tiny_bert_dir, api, method="sine", rank=4, omega=100.0, steps=3, ft_steps=2, seed=1,
                  calib_samples=8, seq_len=16, targets=[MLP])
    # calibrated and tuned (the default for an encoder: the whole model at once)
    assert s["calibration"]["used"] and s["finetune"]["mode"] == "global" and "loss_end" in s["finetune"]
    code, _, err = cli("factorize", tiny_bert_dir, "--method", "sine", "--rank", "4", "--omega", "100",
                       "--fit-steps", "3", "--steps", "2", "--seed", "1", "--calib-samples", "8", "--seq-len", "16",
                       "--target", MLP, "--out", by_cli)
    assert code == 0, err
    p = recipe(tmp_path, f"""
        version: 1
        model: {tiny_bert_dir}
        output: {by_recipe}
        defaults: {{method: sine, rank: 4, omega: 100, fit_steps: 3}}
        targets:
          - match: '{MLP}'
        calibration: {{samples: 8, seq_len: 16}}
        finetune: {{steps: 2}}
        seed: 1
        """)
    code, _, err = cli("factorize", "--recipe", p)
    assert code == 0, err
    names = sorted(f.name for f in api.iterdir())
    assert "model.safetensors" in names and "config.json" in names
    for out in (by_cli, by_recipe):
        assert sorted(f.name for f in out.iterdir()) == names
    for name in names:
        assert (api / name).read_bytes() == (by_cli / name).read_bytes(), name
        if name not in ("model.safetensors", "README.md"):  # the recipe run's card and metadata name the recipe
            assert (api / name).read_bytes() == (by_recipe / name).read_bytes(), name
    assert_same_weights(api / "model.safetensors", by_recipe / "model.safetensors")
    assert "r.yaml" in (by_recipe / "README.md").read_text()
