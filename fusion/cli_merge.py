"""``fusion merge``: fine-tunes of one checkpoint merged into one plain Hugging Face folder (:func:`fusion.merge`).

    fusion merge MODEL MODEL ... --output DIR [--method ties] [--base BASE] [--weight 0.6 0.4]
                 [--set density=0.5 ...] [--head N|MODEL] [--dtype bfloat16] [--overwrite]
    fusion merge recipe.yaml [--output DIR] [--set merge.method.params.density=0.5 ...] [--overwrite]

With models, ``--set NAME=VALUE`` sets a parameter of the method (the value is YAML); with a recipe (a ``.yaml``
or ``.yml`` file holding ``output`` and a ``merge`` section, see :mod:`fusion.recipe.merge_recipe`) it overrides
a recipe key, as ``fusion build --set`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import ConfigError

RECIPE_SUFFIXES = (".yaml", ".yml")
MODEL_OPTIONS = ("method", "base", "weight", "head", "dtype")  # given in a recipe's merge: section instead


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``merge`` under the ``fusion`` command's ``subparsers`` (``common``: ``--quiet`` / ``--verbose``)."""
    merge = subparsers.add_parser(
        "merge", parents=[common], help="merge fine-tunes of one checkpoint into one model (weight-space fusion)",
        description="Merge the parameters of several fine-tunes of one checkpoint with a merge method and write the "
                    "result as a plain Hugging Face folder (config, safetensors, tokenizer, fusion_merge.json "
                    "provenance, README.md card), loadable without fusion.")
    merge.add_argument("models", nargs="+", metavar="MODEL",
                       help="model folders, hub ids or package:MODULE (two or more); or one merge recipe .yaml")
    merge.add_argument("--output", help="the folder to write (required with models; a recipe's output: otherwise)")
    merge.add_argument("--method", help="the merge method (default: linear)")
    merge.add_argument("--base", help="the checkpoint the models were fine-tuned from (task-vector methods)")
    merge.add_argument("--weight", type=float, nargs="+", help="one weight per model")
    merge.add_argument("--head", help="keep this model's head (its index from 0, or its reference) when the label "
                                      "sets differ")
    merge.add_argument("--dtype", help="the merged weights' dtype: float32, bfloat16 or float16 (default: the "
                                       "models' own)")
    merge.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a method parameter, e.g. --set density=0.5 (with a recipe: a recipe key, e.g. --set "
                            "merge.method.params.density=0.5); repeatable")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    merge.set_defaults(run=run_merge)
    return merge


def _head(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _from_models(args: argparse.Namespace) -> tuple[Any, Path]:
    from .merging.api import merge
    from .recipe import parse_override

    if args.output is None:
        raise ConfigError("fusion merge MODEL MODEL ...: give --output DIR, the folder the merged model is written to.")
    params = dict(parse_override(text) for text in args.set or [])
    if args.weight is not None:
        params["weight"] = args.weight
    if args.dtype is not None:
        params["merged_dtype"] = args.dtype
    merged = merge(args.models, args.method or "linear", base=args.base, head=_head(args.head),
                   show_progress=not args.quiet, **params)
    return merged, Path(args.output)


def _from_recipe(args: argparse.Namespace) -> tuple[Any, Path]:
    from .recipe import load_merge_recipe, parse_override

    given = [f"--{name}" for name in MODEL_OPTIONS if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"fusion merge {args.models[0]}: {', '.join(given)} apply to models given on the command "
                          "line; with a recipe, set them in its merge: section or with --set merge.KEY=VALUE.")
    overrides = [parse_override(text) for text in args.set or []]
    if args.quiet:
        overrides.append(("merge.show_progress", False))
    return load_merge_recipe(args.models[0], overrides, output=args.output)


def run_merge(args: argparse.Namespace, console: Any) -> int:
    """Merge, write the folder, and say what was written."""
    recipe = len(args.models) == 1 and args.models[0].endswith(RECIPE_SUFFIXES)
    merged, output = _from_recipe(args) if recipe else _from_models(args)
    if output.exists() and not args.overwrite and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not empty; give --overwrite to replace it, or another "
                          "folder.")
    console.step(f"merging {len(merged.config.models)} models: {merged.describe()}")
    merged.save_pretrained(output, overwrite=args.overwrite)
    labels = merged.output_labels(None)
    print(f"saved the {merged.describe()} to {output} (labels: {', '.join(labels)})")
    return 0
