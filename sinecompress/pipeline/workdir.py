"""Per-layer results of a run, kept on disk next to the output.

Fitting writes each layer's factors here as soon as they exist, so memory holds one layer at a
time whatever the model's size, and an interrupted run can continue (``--resume``). Layout of
``.<output name>.sc.work/``::

    run.json                  fingerprint: tool version, plan, source files (size, mtime)
    layer-00012.safetensors   factors of plan.layers[12]; metadata {"layer", "rel_error"}
    layer-00012.dense.json    plan.layers[12] left dense at fit time, with the reason

Every file is written under a temporary name and renamed, so a kill never leaves a half-written
layer. The directory is removed once the output is complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import OMEGA_RANGE
from ..errors import InputError, OutputError, SineCompressWarning, UsageError
from ..io.atomic import atomic_file
from ..io.header import check_safetensors_header
from ..io.sources import Source
from ..io.writer import save_tensors
from ..version import __version__
from .plan import LayerPlan, Plan

WORK_SUFFIX = ".sc.work"


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A full disk or a read-only place while saving fitted layers is an output problem (exit 5)."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"{path}: cannot save fitted layers ({e.strerror or e}); free space or pick another "
                          "--out, then rerun with --resume") from None


def work_path(out: Path) -> Path:
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def fingerprint(src: Source, plan: Plan) -> dict:
    """What must not change between an interrupted run and its ``--resume``."""
    files = sorted({t.file for t in src.tensors.values()})
    # In-memory sources (timm:NAME, a live module) have no file to check: their name stands in.
    stats = {str(f.resolve()) if f.is_file() else str(f): [f.stat().st_size, f.stat().st_mtime_ns] if f.is_file()
             else None for f in files}
    return {"tool_version": __version__, "plan": {k: v for k, v in plan.to_dict().items() if k != "source"},
            "files": stats}


class WorkDir:
    def __init__(self, path: Path):
        self.path = path

    def layer_file(self, i: int) -> Path:
        return self.path / f"layer-{i:05d}.safetensors"

    def dense_file(self, i: int) -> Path:
        return self.path / f"layer-{i:05d}.dense.json"

    def save(self, i: int, lp: LayerPlan, factors: dict) -> None:
        with writing(self.path):
            self._save(i, lp, factors)

    def _save(self, i: int, lp: LayerPlan, factors: dict) -> None:
        tensors = {k: v for k, v in factors.items() if isinstance(v, torch.Tensor)}
        # Scalars the fit chose or measured (ω under --omega auto, activation error, ...) travel with the factors.
        extra = {k: v for k, v in factors.items() if not isinstance(v, torch.Tensor) and v is not None}
        extra.setdefault("omega", lp.omega)
        meta = {"layer": lp.name, "rel_error": json.dumps(float(factors["rel_error"])), "extra": json.dumps(extra)}
        with atomic_file(self.layer_file(i)) as tmp:
            save_tensors(tmp, tensors, meta)
        self.dense_file(i).unlink(missing_ok=True)  # a refitted layer's earlier "dense" record no longer holds

    def spill(self, i: int, lp: LayerPlan, factors: dict) -> StoredFactors:
        """Save a calibrated fit's factors and return them as a lazy mapping: a block-by-block run holds
        one block's factors in memory, not the whole compressed model's."""
        self.save(i, lp, factors)
        scalars = {k: v for k, v in factors.items() if not isinstance(v, torch.Tensor)}
        return StoredFactors(self, i, scalars, [k for k, v in factors.items() if isinstance(v, torch.Tensor)])

    def save_dense(self, i: int, lp: LayerPlan, reason: str) -> None:
        with writing(self.path), atomic_file(self.dense_file(i)) as tmp:
            tmp.write_text(json.dumps({"layer": lp.name, "reason": reason}))

    def record(self, i: int, lp: LayerPlan) -> dict | None:
        """The stored result of layer ``i``: {"rel_error"} or {"dense": reason}; None if absent or unusable."""
        dense = self.dense_file(i)
        if dense.exists():  # trusted only where the weight is really non-finite (fit_into checks that)
            try:
                doc = json.loads(dense.read_text())
                if doc["layer"] == lp.name:
                    return {"dense": str(doc["reason"])}
            except (ValueError, KeyError, TypeError, RecursionError):
                pass
            dense.unlink()
            return None
        f = self.layer_file(i)
        if not f.exists():
            return None
        try:
            header = check_safetensors_header(f)
            meta = header.pop("__metadata__", {})
            want = lp.factor_shapes
            ok = (meta.get("layer") == lp.name and set(header) == set(want)
                  and all(tuple(header[k]["shape"]) == s and header[k]["dtype"] == lp.dtype for k, s in want.items()))
            if ok:
                rec = {**json.loads(meta.get("extra", "{}")), "rel_error": float(json.loads(meta["rel_error"]))}
                if self._trusted(i, rec, want):
                    return rec
        except (InputError, ValueError, KeyError, TypeError, RecursionError):
            pass
        f.unlink()  # damaged, tampered with or from another plan: fit it again
        return None

    def _trusted(self, i: int, rec: dict, keys) -> bool:
        """What ``--resume`` reuses must be a fit this tool could have made: finite errors, a sine layer's ω
        in range, and finite factors (a NaN planted in a factor must not reach the output)."""
        numbers = [rec["rel_error"]] + [rec[k] for k in ("act_error", "omega") if rec.get(k) is not None]
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
            return False
        if rec.get("omega") is not None and not OMEGA_RANGE[0] <= rec["omega"] <= OMEGA_RANGE[1]:
            return False
        return all(bool(torch.isfinite(self.factor(i, k)).all()) for k in keys)

    def factor(self, i: int, key: str) -> torch.Tensor:
        with safe_open(str(self.layer_file(i)), framework="pt") as f:
            return f.get_tensor(key)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def prepare(out: Path, src: Source, plan: Plan, resume: bool, resumable: bool = True) -> WorkDir:
    """Create the run's work directory, or check an existing one before ``--resume`` reuses it.
    ``resumable``: whether this kind of run can reuse an interrupted one (a calibrated run cannot)."""
    path = work_path(out)
    fp = fingerprint(src, plan)
    run = path / "run.json"
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        raise UsageError(f"{path}: expected the work directory of an earlier run, found a "
                         f"{'symbolic link' if path.is_symlink() else 'file'}; move it away and rerun")
    if path.exists() and resume:
        try:
            old = json.loads(run.read_text())
        except (OSError, ValueError, RecursionError):  # damaged (or 100k-deep): not this run's record
            old = None
        if old != fp:
            what = _first_difference(old, fp)
            raise UsageError(f"--resume: {path} was made by a different run ({what} differs); "
                             "rerun with the same source and flags, or without --resume to start over")
        return WorkDir(path)
    if path.exists():
        n = len(list(path.glob("layer-*")))
        hint = " (pass --resume to reuse them)" if resumable else ""
        warnings.warn(f"discarding {n} fitted layers of an interrupted run in {path}{hint}",
                      SineCompressWarning, stacklevel=2)
        shutil.rmtree(path)
    elif resume:
        warnings.warn(f"--resume: no interrupted run at {path}; starting from the first layer",
                      SineCompressWarning, stacklevel=2)
    with writing(path):
        path.mkdir()
        with atomic_file(run) as tmp:
            tmp.write_text(json.dumps(fp, sort_keys=True))
    return WorkDir(path)


def _first_difference(old, new) -> str:
    if not isinstance(old, dict):
        return "run.json (missing or unreadable)"
    for key in ("tool_version", "files", "plan"):
        if old.get(key) != new.get(key):
            if key == "plan" and isinstance(old.get("plan"), dict):
                diff = sorted(k for k in new["plan"] if old["plan"].get(k) != new["plan"][k])
                return "plan: " + ", ".join(diff)
            return {"files": "source files (size or modification time)"}.get(key, key)
    return "run.json"


class StoredFactors(Mapping):
    """One fitted layer's factors, read from the work directory only when the writer asks for them."""

    def __init__(self, work: WorkDir, i: int, record: dict, keys):
        self.work, self.i, self.keys_ = work, i, tuple(keys)
        self.scalars = dict(record)  # rel_error, act_error, omega, ...

    def __getitem__(self, key):
        if key in self.scalars:
            return self.scalars[key]
        if key not in self.keys_:
            return None
        return self.work.factor(self.i, key)

    def __iter__(self):
        return iter((*self.scalars, *self.keys_))

    def __len__(self):
        return len(self.scalars) + len(self.keys_)


def stored_factors(work: WorkDir, plan: Plan) -> tuple[dict[str, StoredFactors], dict[str, str]]:
    """Every fitted layer's stored result, and the layers left dense at fit time (name -> reason)."""
    out, dense = {}, {}
    for i, lp in enumerate(plan.layers):
        if lp.keep_dense:
            continue
        rec = work.record(i, lp)
        if rec is None:
            raise InputError(f"{work.path}: the result of layer {lp.name!r} is missing; rerun with --resume")
        if "dense" in rec:
            dense[lp.name] = rec["dense"]
            continue
        out[lp.name] = StoredFactors(work, i, rec, lp.factor_shapes)
    return out, dense
