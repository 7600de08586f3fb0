"""The main job, as one straight line: source → plan → calibrate → fit each layer → (fine-tune) → write → summary."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from ..config import FactorizeConfig, make_config, resolve_device
from ..errors import InputError, OutputError, UsageError
from ..fit.sine import gram_dtype_on
from ..heap import gpu_record, reset_gpu_peak
from ..io.atomic import claim_output, held_here
from ..io.format import ALL_SUFFIXES, read_metadata
from ..io.hf_model import is_causal_lm, is_causal_lm_dir
from ..io.model_dir import not_a_model_output
from ..io.open import open_source
from ..io.sources import Source
from ..progress import Progress, as_progress
from .allocate import apply_sensitivity
from .blockwise import fit_blockwise
from .calibrate import calibrate, decide
from .card import compressed_card
from .distributed import from_env
from .finetune import finetune
from .fitting import fit_into, fit_layers, settle
from .plan import build_plan
from .sequential import fit_sequential
from .stack_sensitivity import apply_stack_sensitivity
from .validate import check_targets, warn_kept_dense
from .workdir import WorkDir, prepare, stored_factors
from .workers import held_by_parent, in_worker, run_workers
from .write import summarize, write_compressed


def factorize(source: str | Path, out: str | Path, config: FactorizeConfig | None = None, /, *,
              progress: Progress | None = None, model: nn.Module | None = None,
              provenance: dict | None = None, reads: Iterable[str | Path] = (), **settings) -> dict | None:
    """Compress ``source`` into ``out`` as ``config`` says; return the summary (what ``--json`` prints).

    ``progress`` hears each stage (``sinecompress.progress.Progress``; a plain callback
    ``fn(layer, done, total)`` hears the layer fits). ``config`` is a ``FactorizeConfig``; flat settings (``rank=32``, ``fit_steps=100``, ... the keys of
    ``sinecompress.config.SETTINGS``, older names included) may be given instead or on top, with the same
    defaults as the CLI. Calibration (on by default for text model directories) makes every fit
    activation-aware; ``model`` supplies the network for sources without a config.json. Weight-only runs
    hold about one layer at a time: each fitted layer goes to the run's work directory (``workdir.py``),
    which also gives ``resume``, and the output is streamed from there. Under ``torchrun`` their layers
    are split across ranks; ranks other than 0 return None. ``provenance``: extra metadata (a recipe);
    ``reads``: more files the run reads (a recipe), which the output must stay clear of too.
    """
    config = make_config(config, **settings)
    progress = as_progress(progress)
    out = Path(out)
    progress.stage("loading")
    src = open_source(source, allow_pickle=config.allow_pickle)
    check_source(src)
    calibrated = decide(src, config.calibration, model)[0]
    check_run(config, calibrated)
    if in_worker() and (held_by_parent() or from_env().rank != 0):
        claim = contextlib.nullcontext()  # the launching process holds the output; rank 0 writes it
        held_here(out)
    else:
        inputs = [*src.paths(), *map(Path, reads)]
        if config.calibration.source is not None:
            inputs.append(Path(config.calibration.source))
        claim = claim_output(out, config.output.overwrite, inputs, output_kind(src, config), not_a_model_output)
    # The claim (a lock, and the output checked) comes before minutes of fitting, not after.
    with claim:
        if config.workers > 1 and not in_worker():
            # the workers write the output, so they carry the provenance (a recipe's record) too
            return run_workers(functools.partial(factorize, provenance=provenance), source, out, config)
        return _run(src, out, config, progress, model, provenance, calibrated)


def check_source(src: Source) -> None:
    """Refuse a source whose output could not be read back: one compressed already (its layer records
    would be lost), or one holding tensor names this tool writes for compressed layers."""
    if read_metadata(src.metadata, src.display) is not None:
        raise InputError(f"{src.display}: already compressed by sinecompress; inflate it first "
                         "(`sinecompress inflate`) or factorize the original checkpoint")
    clash = next((k for k in src.tensors if k.rsplit(".", 1)[-1] in ALL_SUFFIXES), None)
    if clash is not None:
        raise InputError(f"{src.display}: holds a tensor named {clash!r}, a name this tool writes for compressed "
                         "layers, so the output could not be read back; rename that tensor first")


def check_run(config: FactorizeConfig, calibrated: bool) -> None:
    """Settings that contradict how the run will go fail now, before anything is loaded or fitted."""
    if calibrated and (config.output.resume or config.workers > 1 or in_worker()):
        what = "--resume" if config.output.resume else "--workers" if config.workers > 1 else "torchrun"
        raise UsageError(f"{what}: resuming and several processes are for weight-only fits; calibrated runs "
                         "hold their layers in memory; add --no-calib, or drop " + what)
    if not calibrated and config.finetune.steps not in ("auto", 0):
        raise UsageError(f"--steps {config.finetune.steps}: the fine-tune needs calibration, which this run "
                         "does not have; give a model directory (or --calib), or drop --steps")
    if not calibrated and config.method == "wsvd":
        raise UsageError("--method wsvd needs calibration data; give a model directory with a tokenizer, or --calib")


def finetune_mode(mode: str, src: Source, model=None) -> str:
    """``auto``: block by block for a causal LM, whose depth would otherwise cost memory; the whole model
    at once for the rest (encoders, vision models, a live module), where it measured better and faster."""
    if mode != "auto":
        return mode
    if model is not None:
        return "global"
    return "block" if causal_lm(src) else "global"


def causal_lm(src: Source, model=None) -> bool:
    """Whether the model being compressed is a causal LM: a live module's config, else the source's config.json."""
    if model is not None:
        return hasattr(model, "config") and is_causal_lm(model.config)
    return is_causal_lm_dir(src.side_dir())


def output_kind(src: Source, config: FactorizeConfig) -> str:
    """A file for a file source; a directory for a model directory, or when the output is sharded."""
    return "dir" if src.side_dir() is not None or config.output.max_shard_size is not None else "file"


def _run(src: Source, out: Path, config: FactorizeConfig, progress: Progress, model, provenance,
         calibrated: bool) -> dict | None:
    t0 = time.perf_counter()
    dist = from_env()
    device = resolve_device(config.device)
    reset_gpu_peak(device)
    check_targets(src, config.targets)
    plan = build_plan(src, config)
    if dist.rank == 0:
        warn_kept_dense(plan)
    mode = finetune_mode(config.finetune.mode, src, model) if calibrated else None
    if config.finetune.target != "auto" and mode != "block":
        doing = {"global": "tunes the whole model at once", "none": "tunes nothing"}.get(mode, "is not calibrated")
        raise UsageError(f"--tune-target (recipe finetune.target) {config.finetune.target} applies to block "
                         f"tuning, and this run {doing}; add --finetune block, or leave --tune-target out")
    if not calibrated and any(lp.method == "wsvd" for lp in plan.compressed):  # a recipe rule's wsvd
        raise UsageError(f"--method wsvd needs calibration data, and {decide(src, config.calibration)[1]}")
    cal, note = None, decide(src, config.calibration, model)[1]
    ft_steps = config.finetune.steps_on(device, mode)
    if calibrated and mode == "global":  # the whole model, in memory
        progress.stage("calibrating")
        cal, note = calibrate(src, [lp.name for lp in plan.compressed], config.calibration, model=model,
                              device=device, whole_model=ft_steps > 0)
    tune, work, spill, sequential, record = None, None, None, False, {"used": False}
    allocation = {"mode": "uniform"}
    try:
        if calibrated and mode != "global":
            # Each block's factors go to a work directory as they are made: memory does not grow with depth.
            spill = prepare(out, src, plan, resume=False, resumable=False)
        if plan.allocate == "sensitivity" and spill is not None:  # measured block by block too
            scratch = spill.path / "sensitivity"
            scratch.mkdir()
            plan, allocation = apply_stack_sensitivity(plan, src, config, device, scratch, progress)
        elif plan.allocate == "sensitivity":
            plan, allocation = apply_sensitivity(plan, src, cal, progress)
        if not calibrated:
            work = WorkDir(Path(dist.on_rank0(lambda: str(prepare(out, src, plan, config.output.resume).path))))
            dist.all_ok(lambda: fit_into(work, src, plan, progress, dist))
            factors, dense = stored_factors(work, plan)
            plan = settle(plan, factors, dense)
        elif mode != "global":
            factors, tune = fit_blockwise(src, plan, config, device, ft_steps if mode == "block" else 0, progress,
                                          work=spill)
            plan = settle(plan, factors)
            record = {"used": True, "data": tune["data"], "samples": tune["samples"]}
            note = f"calibrated block by block on {tune['data']}"
        else:
            record = cal.record()
            # Calibrated fits need the model's activations and tune all layers together: one process, in memory.
            sequential = config.fit.sequential if config.fit.sequential is not None else ft_steps <= 0
            factors = (fit_sequential if sequential else fit_layers)(src, plan, progress, cal, device)
            plan = settle(plan, factors)
            if ft_steps > 0:
                lr = config.finetune.lr_for(mode, causal_lm(src, model))
                factors, tune = finetune(src, plan, factors, cal, steps=ft_steps, lr=lr, seed=config.seed,
                                         device=device, progress=progress)
                tune = {"mode": "global", "lr": lr, **tune}
        card = compressed_card(src, plan, factors, config, out, provenance, tune)
        try:
            write_compressed(src, plan, factors, out, config.output.overwrite, config.output.shard_bytes, dist,
                             extra=provenance, progress=progress, card=card)
        except OutputError as e:
            if work is not None:  # the fit is not lost: say where it is and how to use it
                raise OutputError(f"{e}; the fitted layers are kept in {work.path}: free the space, then rerun with "
                                  "--resume") from None
            raise
    finally:  # the block path's factors on disk: not resumable, so gone whatever the outcome
        if spill is not None:
            spill.remove()
    if dist.rank != 0:
        return None
    if work is not None:
        work.remove()
    summary = summarize(src, plan, factors, out, time.perf_counter() - t0)
    summary["calibration"] = {**record, "note": note}
    if record.get("used") and (plan.method == "sine" or any(lp.method == "sine" for lp in plan.layers)):
        # bfloat16 where it is native: the same command can fit a hair differently on another machine
        summary["calibration"]["gram_product"] = str(gram_dtype_on(device)).removeprefix("torch.")
    summary["finetune"] = tune
    summary["allocation"] = allocation
    summary["sequential"] = sequential
    summary.update(gpu_record(device))  # the whole run's peak, on a CUDA device
    return summary
