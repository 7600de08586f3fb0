"""`eval` and sinecompress.evaluate: sliding-window perplexity, encoder agreement, loading, CLI, gates.

Models are tiny random-weight ones built from configs here (a Llama causal LM with a small word-level
tokenizer; the shared tiny BERT with MiniLM's tokenizer); the reference numbers are computed in the tests
by other means (token by token, text by text).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from sinecompress.errors import InputError, UsageError
from sinecompress.report.evaluate import evaluate, perplexity

from .helpers import cli as run_in_process
from .helpers import tiny_bert

WORDS = ("the a of to and in is it for on with as by this that be are or from at an not file path "
         "return returns value object string list new name data default if none true false").split()
LINES = [
    "Return the value of the object as a string .",
    "the file is not a path and it is not a string",
    "If the name is none , return the default value .",
    "A new list of data from the file , or none if it is not there",
    "This returns true if the path is a file and false if not",
    "Return a string with the name of the file .",
    "it is the default for a new object",
    "the data is a list of string values from the path , one for each name",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("llama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, ",": 3, ".": 4, **{w: i + 5 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(d))
    # Large initial weights so that predictions depend on the context (a window cut changes them).
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.3, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def llama(llama_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(llama_dir)).eval()


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "eval.txt"
    p.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return p


def token_by_token(model, ids: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """Mean NLL where token t is predicted from ids[b:t], b the start of the first window (starts 0, stride,
    2·stride, ...) that holds t after at least one token; a token at a window start with no earlier window
    holding it is not scored. One forward per token: independent of how `perplexity` slices windows."""
    nlls = []
    for t in range(1, len(ids)):
        b = max(0, (t - window) // stride + 1) * stride  # first start with b + window > t
        if b == t:
            continue
        with torch.no_grad():
            logits = model(input_ids=ids[b:t][None]).logits[0, -1]
        nlls.append(-torch.log_softmax(logits.double(), -1)[ids[t]].item())
    return sum(nlls) / len(nlls), len(nlls)


@pytest.mark.parametrize("window,stride", [(8, 3), (8, 8), (6, 1)])
def test_perplexity_matches_token_by_token(llama, window, stride):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, llama.config.vocab_size, (29,), generator=g)
    r = perplexity(llama, ids, window, stride)
    nll, count = token_by_token(llama, ids, window, stride)
    assert r["scored_tokens"] == count
    assert count == (28 if stride < window else 28 - (29 - 1) // window)  # stride == window skips window starts
    assert r["nll"] == pytest.approx(nll, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    # The window really limits the context: with the whole prefix as context the number differs.
    full, _ = token_by_token(llama, ids, 29, 1)
    assert abs(full - nll) > 1e-3


def test_perplexity_settings_are_checked(llama):
    ids = torch.arange(10)
    with pytest.raises(UsageError, match="--window"):
        perplexity(llama, ids, window=1, stride=1)
    with pytest.raises(UsageError, match="--stride"):
        perplexity(llama, ids, window=4, stride=5)
    with pytest.raises(InputError, match="at least 2"):
        perplexity(llama, ids[:1], window=4, stride=2)


def variant(llama_dir: Path, dest: Path, weights=None, **config) -> Path:
    """A copy of the tiny Llama directory with some weights scaled (name -> factor or NaN) or config keys set."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(llama_dir, dest)
    sd = load_file(str(dest / "model.safetensors"))
    for name, f in (weights or {}).items():
        sd[name] = sd[name] * f if math.isfinite(f) else sd[name].clone().fill_(f)
    save_file(sd, str(dest / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, **config}))
    return dest


def test_perplexity_of_a_broken_model_is_infinite_or_refused_never_an_overflow(llama_dir, text_file, tmp_path):
    from sinecompress.errors import NonFiniteOutput

    huge = variant(llama_dir, tmp_path / "huge", {"lm_head.weight": 1e5})  # finite logits, nll past exp's range
    r = evaluate(str(huge), text=text_file, window=8)
    assert r["model"]["perplexity"] == math.inf and 709 < r["model"]["nll"] < math.inf
    nan = variant(llama_dir, tmp_path / "nan", {"model.norm.weight": math.nan})
    with pytest.raises(NonFiniteOutput, match=r"nan: its logits are not finite \(NaN or infinite\)"):
        evaluate(str(nan), text=text_file, window=8)


def test_a_tokenizer_past_the_models_vocabulary_is_named(llama_dir, text_file, tmp_path):
    small = variant(llama_dir, tmp_path / "small", vocab_size=8)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(small / "model.safetensors"))
    sd = {k: v[:8] if k in ("model.embed_tokens.weight", "lm_head.weight") else v for k, v in sd.items()}
    save_file(sd, str(small / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"its tokenizer gives token id \d+, but the model has 8 token embeddings"):
        evaluate(str(small), text=text_file, window=8)


def test_a_config_that_does_not_fit_its_weights_is_refused_before_it_is_built(llama_dir, tmp_path):
    cfg = json.loads((llama_dir / "config.json").read_text())
    bare = variant(llama_dir, tmp_path / "bare")
    keep = ("architectures", "model_type", "vocab_size", "num_hidden_layers")
    (bare / "config.json").write_text(json.dumps({k: cfg[k] for k in keep}))  # sizes default to Llama-7B's
    with pytest.raises(InputError, match=r"weight '[\w.]+' has shape \[43, 32\], but the model "
                       r"config.json describes needs \[43, 4096\]"):
        evaluate(str(bare), window=8)


def test_evaluate_scores_the_joined_text_with_the_models_tokenizer(llama, llama_dir, text_file):
    from transformers import AutoTokenizer

    r = evaluate(str(llama_dir), text=text_file, window=8, stride=4, max_tokens=0)
    ids = torch.tensor(AutoTokenizer.from_pretrained(str(llama_dir))("\n\n".join(LINES))["input_ids"])
    direct = perplexity(llama, ids, 8, 4)
    assert r["kind"] == "causal_lm" and r["against"] is None and r["text"] == str(text_file)
    assert r["model"]["tokens"] == len(ids) and r["model"]["perplexity"] == pytest.approx(direct["perplexity"])
    cut = evaluate(str(llama_dir), text=text_file, window=8, stride=4, max_tokens=20)
    assert cut["model"]["tokens"] == 20
    assert cut["model"]["perplexity"] == pytest.approx(perplexity(llama, ids[:20], 8, 4)["perplexity"])


def test_compressed_causal_lm_is_loaded_with_its_lm_head(llama_dir, text_file, tmp_path):
    from sinecompress import factorize, inflate

    out = tmp_path / "sine"
    factorize(str(llama_dir), str(out), method="svd", rank=4, calibration=False)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["architectures"]  # as for a config converted from GGUF: the class must come from model_type
    (out / "config.json").write_text(json.dumps(cfg))
    r = evaluate(str(out), against=str(llama_dir), text=text_file, window=8, max_tokens=0)
    assert r["model"]["compressed"] and not r["against"]["compressed"] and r["same_tokens"]
    assert r["perplexity_ratio"] == pytest.approx(r["model"]["perplexity"] / r["against"]["perplexity"])
    assert r["model"]["perplexity"] != pytest.approx(r["against"]["perplexity"], rel=1e-3)
    inflate(str(out), str(tmp_path / "dense"))
    dense = evaluate(str(tmp_path / "dense"), text=text_file, window=8, max_tokens=0)
    assert r["model"]["perplexity"] == pytest.approx(dense["model"]["perplexity"], rel=1e-4)


# --- encoders ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    """The tiny BERT and a copy with every matrix perturbed (random BERTs embed all texts alike, so only a
    large change moves the embeddings and their neighbours)."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("bert")
    a = tiny_bert(root)
    b = root / "perturbed"
    shutil.copytree(a, b)
    sd = load_file(str(a / "model.safetensors"))
    g = torch.Generator().manual_seed(2)
    for k, w in sd.items():
        if w.ndim == 2:
            sd[k] = w + 0.5 * w.std() * torch.randn(w.shape, generator=g)
    save_file(sd, str(b / "model.safetensors"), metadata={"format": "pt"})
    return a, b


def text_by_text(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """One unpadded forward per text; mean over its tokens; L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    rows = []
    with torch.no_grad():
        for t in texts:
            h = model(**tok(t, return_tensors="pt")).last_hidden_state[0]
            rows.append(torch.nn.functional.normalize(h.mean(0), dim=0))
    return torch.stack(rows)


def test_encoder_agreement_against_a_text_by_text_computation(bert_pair, text_file):
    a, b = bert_pair
    same = evaluate(str(a), against=str(a), text=text_file, max_tokens=0)["agreement"]
    assert same["cosine"] == pytest.approx(1.0, abs=1e-6) and same["nn_agreement"] == 1.0
    assert same["texts"] == len(LINES)
    r = evaluate(str(b), against=str(a), text=text_file, max_tokens=0)
    ea, eb = text_by_text(a, LINES), text_by_text(b, LINES)
    cos = (ea * eb).sum(-1)
    nn_a = [max((j for j in range(len(LINES)) if j != i), key=lambda j: float(ea[i] @ ea[j])) for i in range(len(LINES))]
    nn_b = [max((j for j in range(len(LINES)) if j != i), key=lambda j: float(eb[i] @ eb[j])) for i in range(len(LINES))]
    expected_nn = sum(x == y for x, y in zip(nn_a, nn_b)) / len(LINES)
    got = r["agreement"]
    assert got["cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert got["cosine_min"] == pytest.approx(float(cos.min()), abs=1e-5)
    assert got["nn_agreement"] == pytest.approx(expected_nn)
    assert got["cosine"] < 0.95 and 0 < got["nn_agreement"] < 1  # the perturbation is visible


def test_encoder_needs_a_reference_and_two_texts(bert_pair, llama_dir, tmp_path):
    a, _ = bert_pair
    with pytest.raises(UsageError, match="--against"):
        evaluate(str(a))
    one = tmp_path / "one.txt"
    one.write_text("only one line\n")
    with pytest.raises(InputError, match="at least 2 texts"):
        evaluate(str(a), against=str(a), text=one)
    with pytest.raises(UsageError, match="causal LM"):
        evaluate(str(llama_dir), against=str(a))


# --- command line -----------------------------------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    return run_in_process(*args)


def test_cli_eval_help_documents_every_option(capsys):
    code, out, _ = cli(capsys, "eval", "--help")
    assert code == 0
    for opt in ("--against", "--text", "--window", "--stride", "--max-tokens", "--device", "--json"):
        assert opt in out


def test_cli_eval_json(capsys, llama_dir, text_file):
    code, out, err = cli(capsys, "eval", llama_dir, "--against", llama_dir, "--text", text_file,
                         "--window", "8", "--stride", "4", "--max-tokens", "0", "--device", "cpu", "--json")
    assert code == 0, err
    r = json.loads(out)
    direct = evaluate(str(llama_dir), text=text_file, window=8, stride=4, max_tokens=0)
    assert r["model"]["perplexity"] == pytest.approx(direct["model"]["perplexity"])
    assert r["perplexity_ratio"] == pytest.approx(1.0)
    assert "perplexity ratio" in err and "window 8, stride 4: " in err
    assert re.search(r"^\[\s*\d+ s\] loading ", err, re.M)  # off a terminal: the plain log lines factorize prints


def test_cli_eval_encoder(capsys, bert_pair, text_file):
    a, b = bert_pair
    code, out, err = cli(capsys, "eval", b, "--against", a, "--text", text_file, "--device", "cpu")
    assert code == 0, err
    assert out == "" and "nearest-neighbour agreement" in err


def bad_inputs(tmp_path, llama_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    no_config = tmp_path / "noconfig"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((llama_dir / "model.safetensors").read_bytes())
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"txt": "x"}\n')
    one_token = tmp_path / "one.txt"
    one_token.write_text("file\n")
    short_context = variant(llama_dir, tmp_path / "short", max_position_embeddings=1)
    bad_groups = variant(llama_dir, tmp_path / "groups", num_key_value_heads=3)
    return [
        (["--text", tmp_path / "missing.txt"], 3, "missing.txt: evaluation text file not found"),
        (["--text", empty], 3, "no evaluation text found"),
        (["--text", latin], 3, "cannot read evaluation text"),
        (["--text", jsonl], 3, 'bad.jsonl:1: expected a JSON object with a "text" field'),
        (["--window", "0"], 2, "--window 0"),
        (["--window", "-3"], 2, "--window -3"),
        (["--window", "8", "--stride", "9"], 2, "--stride 9"),
        (["--max-tokens", "1"], 2, "--max-tokens 1"),
        (["--window", "257"], 2, "longer than"),
        (["--stride", "0"], 2, "--stride 0: must be at least 1 token"),
        (["--device", "tpu"], 2, "--device must be one of auto, cpu, cuda, got 'tpu'"),
        (["--text", one_token], 3, f"{one_token}: 1 token(s) under {llama_dir}'s tokenizer"),
        (["--against", short_context], 3, "its config's max_position_embeddings is 1"),
        (["--against", bad_groups], 3, "num_key_value_heads 3, which does not divide num_attention_heads 4"),
        (["--against", no_config], 3, "no config.json"),
        (["--against", llama_dir / "model.safetensors"], 3, "needs a model directory with config.json"),
    ]


def test_cli_eval_json_is_strict_for_an_infinite_perplexity(capsys, llama_dir, text_file, tmp_path):
    huge = variant(llama_dir, tmp_path / "huge", {"lm_head.weight": 1e5})
    code, out, err = cli(capsys, "eval", huge, "--text", text_file, "--window", "8", "--json")
    assert code == 0, err

    def refuse(token):
        raise ValueError(token)

    r = json.loads(out, parse_constant=refuse)  # no NaN/Infinity tokens, which JSON does not have
    assert r["model"]["perplexity"] is None and r["model"]["nll"] > 709
    assert re.search(r"\binf\b", err)  # the table shows it


def test_cli_eval_bad_inputs_are_one_line_errors(capsys, llama_dir, tmp_path):
    for extra, code_expected, message in bad_inputs(tmp_path, llama_dir):
        code, out, err = cli(capsys, "eval", llama_dir, *extra)
        assert code == code_expected, (extra, err)
        lines = [x for x in err.splitlines() if x.strip() and not re.match(r"\[\s*\d+ s\] ", x)]  # progress log
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (extra, err)
        assert out == ""
    code, _, err = cli(capsys, "eval", tmp_path / "nope")
    assert code == 3 and "nope: no such file or directory" in err


# --- gates ------------------------------------------------------------------------------------------


def test_perplexity_gates_pass_and_fail(llama_dir, tmp_path):
    from sinecompress import factorize
    from sinecompress.io.open import open_source
    from sinecompress.recipe.gates import check_gates, needs_model_dir

    out = tmp_path / "sine"
    summary = factorize(str(llama_dir), str(out), method="svd", rank=4, calibration=False)
    r = evaluate(str(out), against=str(llama_dir))
    ppl, ratio = r["model"]["perplexity"], r["perplexity_ratio"]
    passing = check_gates({"max_perplexity": ppl * 1.01, "max_perplexity_ratio": ratio * 1.01}, summary,
                          open_source(llama_dir), out)
    assert [g["gate"] for g in passing] == ["max_perplexity", "max_perplexity_ratio"]
    assert all(g["passed"] for g in passing)
    assert passing[0]["value"] == pytest.approx(ppl) and passing[1]["value"] == pytest.approx(ratio)
    failing = check_gates({"max_perplexity": ppl * 0.99, "max_perplexity_ratio": ratio * 0.99}, summary,
                          open_source(llama_dir), out)
    assert not any(g["passed"] for g in failing)
    with pytest.raises(UsageError, match="max_perplexity needs a causal LM"):
        needs_model_dir({"max_perplexity": 10}, tiny_bert(tmp_path), "bert")
    with pytest.raises(UsageError, match="max_perplexity_ratio runs the model"):
        needs_model_dir({"max_perplexity_ratio": 1.2}, None, "x.safetensors")


def test_a_perplexity_gate_on_a_model_without_a_tokenizer_is_refused_before_fitting(llama_dir, tmp_path):
    from sinecompress.recipe.gates import needs_model_dir

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / f, bare / f)
    with pytest.raises(UsageError, match=r"gate max_perplexity measures perplexity with the model's own tokenizer, "
                                         r"and .*bare has no tokenizer files"):
        needs_model_dir({"max_perplexity": 10}, bare, str(bare))


def test_a_model_with_nan_logits_fails_its_perplexity_gates(llama_dir, tmp_path):
    from sinecompress.io.open import open_source
    from sinecompress.recipe.gates import check_gates

    nan = variant(llama_dir, tmp_path / "nan", {"model.norm.weight": math.nan})
    results = check_gates({"max_perplexity": 100.0, "max_perplexity_ratio": 2.0}, {"layers": []},
                          open_source(llama_dir), nan)
    assert [r["gate"] for r in results] == ["max_perplexity", "max_perplexity_ratio"]
    assert not any(r["passed"] for r in results) and all(math.isnan(r["value"]) for r in results)
    assert "its logits are not finite" in results[0]["detail"]


def test_json_output_has_no_nan_or_infinity_tokens(capsys):
    from sinecompress.cli.json_out import print_json

    print_json({"a": math.nan, "b": [1.5, -math.inf, {"c": math.inf}], "d": "nan"})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.5, None, {"c": None}], "d": "nan"}


def test_recipe_schema_accepts_the_perplexity_gates(tmp_path):
    from sinecompress.recipe.schema import parse_recipe

    r = parse_recipe("version: 1\ndefaults: {rank: 4}\ngates: {max_perplexity: 40, max_perplexity_ratio: 1.5}\n",
                     "r.yaml")
    assert r.gates == {"max_perplexity": 40, "max_perplexity_ratio": 1.5}
    with pytest.raises(UsageError, match="max_perplexity"):
        parse_recipe("version: 1\ndefaults: {rank: 4}\ngates: {max_perplexity: 0.5}\n", "r.yaml")
