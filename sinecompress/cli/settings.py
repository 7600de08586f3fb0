"""Command-line options from the one settings table, and the settings a command line actually gave."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import BY_KEY

PARAM_TO_KEY = {"no_calib": "calibration"}  # typer parameters whose name is not their setting's
# What --help shows as each option's value (typer would show the Python type, e.g. <list[str]>).
METAVARS = {"method": "sine|svd|wsvd", "rank": "K", "param_ratio": "R", "omega": "ω|auto", "targets": "REGEX",
            "exclude": "REGEX", "allocate": "uniform|sensitivity", "seed": "N", "device": "auto|cpu|cuda",
            "fit_steps": "N", "finetune": "auto|block|global|none", "tune_target": "auto|block|model", "tune_rows": "N", "calib": "FILE", "calib_samples": "N|auto", "seq_len": "TOKENS", "finetune_steps": "N|auto",
            "lr": "LR|auto", "max_shard_size": "SIZE", "workers": "N"}


def option(key: str, *flags: str, **kw):
    """A typer option for setting ``key``: its flag(s), help text and default from ``config.SETTINGS``."""
    s = BY_KEY[key]
    default = kw.pop("default", s.default if not isinstance(s.default, tuple) else [])
    if key in METAVARS:
        kw.setdefault("metavar", METAVARS[key])
    return typer.Option(default, *(flags or (s.cli,)), help=kw.pop("help", s.help), **kw)


def given_settings(ctx: typer.Context) -> dict:
    """The settings given on the command line (not left at their defaults), as flat settings."""
    out = {}
    for name, value in ctx.params.items():
        key = PARAM_TO_KEY.get(name, name)
        if key not in BY_KEY:
            continue
        # by name: typer vendors its own click, so click.core.ParameterSource is a different enum
        if getattr(ctx.get_parameter_source(name), "name", None) != "COMMANDLINE" or value in (None, []):
            continue
        if name == "no_calib":
            value = False if value else None
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = list(value)
        if value is not None:
            out[key] = value
    return out
