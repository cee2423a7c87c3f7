"""A merge recipe: what ``fusion merge recipe.yaml`` writes, in YAML. Its ``merge`` section has the fields of a
merged member's config (:class:`fusion.members.MergedModel`, the same keys as a ``kind: merged`` member), its
``output`` the folder the merged model is written to::

    output: out/merged                 # the plain Hugging Face folder to write
    merge:
      models: [out/ft-a, out/ft-b]     # model directories (relative to the recipe), hub ids or package:MODULE
      method: {name: ties, params: {density: 0.5, weight: [0.6, 0.4]}}   # or just `ties`
      base: bert-base-uncased          # what the models were fine-tuned from (task-vector methods)
      merged_dtype: bfloat16           # also: head, revisions, base_revision, label_map

Example:
    >>> member, output = load_merge_recipe("recipes/merge.yaml")  # doctest: +SKIP
    >>> member.save_pretrained(output)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..members.merged import MergedModel
from .document import Document, describe, parse_yaml
from .recipe import MERGE_SECTION, read_recipe_text
from .schema import component_fields, construct, read_mapping, unknown_key

MERGE_TOP_LEVEL = ("output", MERGE_SECTION)


def parse_merge_recipe(text: str, name: str = "recipe.yaml", base: str | os.PathLike | None = None,
                       overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), *,
                       output: str | None = None) -> tuple[MergedModel, Path]:
    """The merged member and the output folder a merge recipe describes (see ``load_merge_recipe``)."""
    doc = parse_yaml(text, name, Path(base) if base is not None else Path.cwd())
    for key, value in overrides.items() if isinstance(overrides, Mapping) else overrides:
        doc.set(key, value, f"(--set {key})")
    if output is not None:
        doc.set("output", output, "(--output)")
    return read_merge_document(doc)


def read_merge_document(doc: Document) -> tuple[MergedModel, Path]:
    if not isinstance(doc.data, dict) or MERGE_SECTION not in doc.data:
        raise doc.error((), f"a merge recipe is a mapping with a {MERGE_SECTION}: section (and output:); got "
                            f"{describe(doc.data) if not isinstance(doc.data, dict) else 'no merge: section'}.")
    for key in doc.data:
        if key not in MERGE_TOP_LEVEL:
            raise doc.error((key,), unknown_key(key, "a merge recipe", MERGE_TOP_LEVEL) + " (an ensemble recipe's "
                                    "sections are run by `fusion build`)")
    output = doc.data.get("output")
    if output is not None and not isinstance(output, str):
        raise doc.error(("output",), f"output must be a path (a string), got {describe(output)}.")
    folder = doc.resolve_path(("output",), output) if output is not None else Path("out") / Path(doc.name).stem
    raw = doc.data[MERGE_SECTION]
    kwargs = read_mapping(doc, (MERGE_SECTION,), raw, component_fields(MergedModel), MERGE_SECTION)
    return construct(doc, (MERGE_SECTION,), raw, lambda: MergedModel(**kwargs)), folder


def load_merge_recipe(path: str | os.PathLike, overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), *,
                      output: str | None = None) -> tuple[MergedModel, Path]:
    """Read and validate a merge recipe file; nothing is merged yet.

    Args:
        path: the YAML file.
        overrides: ``{"merge.method.params.density": 0.5, ...}`` applied before validation (``--set``).
        output: replaces ``output`` (``--output``).

    Returns:
        The merged member (``save_pretrained`` merges and writes it) and the output folder.

    Raises:
        RecipeError: the first problem, with its line and the accepted values.
    """
    path = Path(path)
    return parse_merge_recipe(read_recipe_text(path), str(path), path.resolve().parent, overrides, output=output)
