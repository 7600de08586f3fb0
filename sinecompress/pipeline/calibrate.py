"""The calibrate stage: build the float32 model, read the calibration batches, capture each target
layer's Gram matrix XᵀX."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..calib.capture import capture_grams
from ..calib.data import CalibData, load_calibration
from ..config import CalibrationConfig
from ..errors import InputError, UsageError
from ..io.hf_model import dense_model, is_causal_lm_dir
from ..io.model_dir import has_tokenizer
from ..io.sources import Source


@dataclass
class Calibration:
    """What the calibrate stage hands to the fit: the float32 model, its batches and per-layer Grams."""

    model: nn.Module
    data: CalibData
    grams: dict[str, dict]

    def record(self) -> dict:
        tokens = next(iter(self.grams.values()))["tokens"] if self.grams else 0
        return {"used": True, "data": self.data.description, "samples": self.data.samples, "tokens": tokens}


def decide(src: Source, cfg: CalibrationConfig, model: nn.Module | None = None) -> tuple[bool, str]:
    """Whether this run calibrates, and the one-line note saying why (cheap: nothing is loaded).

    ``cfg.enabled=None`` means automatic: on for a model directory with a tokenizer (the built-in text)
    or whenever ``cfg.source`` is given; ``enabled=False`` (``--no-calib``) turns it off. Calibration
    asked for explicitly (``enabled=True`` or a source) that cannot happen is an error, not a silent
    weight-space fit.
    """
    if cfg.enabled is False:
        return False, "calibration off (--no-calib): weight-space fit"
    text_model = has_tokenizer(src.side_dir())
    why = None
    if cfg.source is None and not text_model:
        why = "not a text model directory with a tokenizer, and no --calib file"
    elif model is None and src.config() is None:
        why = f"{src.display} has no config.json to build the model from"
    if why is None:
        return True, ""
    if cfg.enabled or cfg.source is not None:
        asked = f"--calib {cfg.source}" if cfg.source else "calibration.enabled"
        raise UsageError(f"calibration was asked for ({asked}) but {why}; pass a Hugging Face model "
                         "directory, or --no-calib")
    return False, f"no calibration: {why}; weight-space fit"


def check_token_ids(data: CalibData, model: nn.Module, where: str) -> None:
    """Token ids outside the model's vocabulary would index past its embedding table."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for b in data.batches:
        ids = b.get("input_ids")
        if vocab and ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InputError(f"{where}: input_ids range over [{int(ids.min())}, {int(ids.max())}], outside the "
                             f"model's vocabulary of {vocab}; were they made with another tokenizer?")


def calibration_data(src: Source, cfg: CalibrationConfig, whole_model: bool = False) -> CalibData:
    """The calibration batches ``cfg`` asks for (``whole_model``: for a whole-model tune, which reads more
    texts under ``samples: auto``, ``CalibrationConfig.rows_for``). Text is packed into full rows
    (``calibration.pack``) by default for a causal LM, which reads text as one stream: one docstring sentence
    per row gave SmolLM2 rows of 19 tokens on average, against the 1,024-token windows it is evaluated on
    (docs/fitting.md)."""
    tensors = cfg.source is not None and Path(cfg.source).suffix == ".safetensors"
    if tensors and cfg.pack:
        raise InputError(f"{cfg.source}: --calib-pack packs text, and this file holds input tensors, already in "
                         "rows; drop --calib-pack")
    side = None if tensors else src.side_dir()
    pack = cfg.pack if cfg.pack is not None else is_causal_lm_dir(side)
    rows = cfg.rows_for(whole_model, per_text=not (tensors or pack))
    return load_calibration(cfg.source, side, rows, cfg.seq_len, pack=pack)


def calibrate(src: Source, names: list[str], cfg: CalibrationConfig = CalibrationConfig(), *,
              model: nn.Module | None = None, device: str = "cpu",
              whole_model: bool = False) -> tuple[Calibration | None, str]:
    """The calibrate stage (``decide`` says whether). Returns (calibration or None, a one-line note for
    the summary). ``model`` supplies the network for sources without a config.json; ``whole_model``: the
    run tunes the whole model afterwards (``calibration_data``)."""
    wanted, note = decide(src, cfg, model)
    if not wanted:
        return None, note
    data = calibration_data(src, cfg, whole_model)  # first: a bad file fails before the model is built
    if model is None:
        model = dense_model(src)
    check_token_ids(data, model, cfg.source or "the built-in text")
    model.to(device)
    grams = capture_grams(model, names, data.batches, device)
    for name, g in grams.items():
        if g["gram"] is None:
            raise InputError(f"layer {name!r} saw no calibration input (is it used in the model's forward?)")
    return Calibration(model, data, grams), f"calibrated on {data.description}"
