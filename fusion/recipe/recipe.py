"""The recipe's sections and the ``Recipe`` that builds members, fusers and the ensemble from them."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..datafiles import DataSpec
from ..ensemble.ensemble import Ensemble
from ..errors import FusionError, did_you_mean
from ..fusers import FUSERS, Fuser, default_fusers
from ..members.base import MEMBERS, Member
from ..train_config import TrainConfig
from .document import MAX_RECIPE_BYTES, Document, KeyPath, RecipeError, describe, fmt, parse_yaml
from .schema import (
    STR,
    Field,
    component_fields,
    construct,
    read_component,
    read_mapping,
    signature_fields,
    unknown_key,
)

# --- sections -------------------------------------------------------------------------------------------------

REPORT_FORMATS = ("html", "md", "json")
ENSEMBLE_SET_ELSEWHERE = ("members", "fuser", "labels", "text_column", "label_column")  # from members/fusers/data
DATA_PATHS = ("path", "train", "validation")
DATA_HELP = ("give a dataset directory (train.csv, optional validation.csv and labels.json) or a "
             ".csv/.tsv/.jsonl/.json file")


@dataclass
class ReportSpec:
    """The ``report`` section: which files ``fusion build`` writes (an empty list writes no report)."""

    formats: list[Literal["html", "md", "json"]] = field(default_factory=lambda: list(REPORT_FORMATS))


def member_fields(cls: type[Member]) -> dict[str, Field]:
    """Recipe keys of a member kind: ``kind`` plus its config's fields."""
    return {"kind": Field("kind", STR, True, "kind"), **component_fields(cls)}


def recipe_kinds() -> list[str]:
    """Member kinds a recipe can build (every required config field can be written in YAML)."""
    return [k for k in MEMBERS if all(f.type.from_yaml for f in member_fields(MEMBERS.get(k)).values() if f.required)]


def read_member(doc: Document, path: KeyPath, value: Any, show_progress: bool = True) -> Member:
    kinds = recipe_kinds()
    if not isinstance(value, dict) or "kind" not in value:
        raise doc.error(path, f"{fmt(path)} must be a mapping with a kind (one of {', '.join(kinds)}) and its "
                              f"settings; got {describe(value)}.")
    kind = value["kind"]
    if kind not in kinds:
        why = " (its constructor needs Python objects; build it in Python)" if isinstance(kind, str) and kind in MEMBERS else ""
        raise doc.error(path + ("kind",), f"{fmt(path + ('kind',))}: unknown member kind {kind!r}{why}; accepted: "
                                          f"{', '.join(kinds)}" + did_you_mean(kind, kinds, "; did you mean {!r}?", "."))
    cls = MEMBERS.get(kind)
    kwargs = read_mapping(doc, path, value, member_fields(cls), f"{fmt(path)} ({kind})")
    del kwargs["kind"]
    if not show_progress and "show_progress" in inspect.signature(cls).parameters:
        kwargs["show_progress"] = False
    return construct(doc, path, value, lambda: cls(**kwargs))


def _make_fuser(show_progress: bool) -> Callable[[type[Fuser], dict[str, Any]], Fuser]:
    def make(cls: type[Fuser], params: dict[str, Any]) -> Fuser:
        if not show_progress and params.get("train_config") is not None:
            params = {**params, "train_config": _quiet(params["train_config"])}
        return cls(**params)

    return make


def _quiet(train_config: TrainConfig | Mapping[str, Any]) -> TrainConfig | dict[str, Any]:
    """A training config (or the mapping a fuser merges over its default) without a progress bar."""
    if isinstance(train_config, TrainConfig):
        return train_config.replace(show_progress=False)
    return {**train_config, "show_progress": False}


def _read_list(doc: Document, key: str, default: list | None) -> list:
    value = doc.data.get(key, default)
    if value is None:
        raise doc.error((), f"the recipe lacks the required section {key!r} (a list).")
    if not isinstance(value, list) or not value:
        raise doc.error((key,), f"{key} must be a non-empty list; got {describe(value)}.")
    return value


def _read_data(doc: Document) -> DataSpec:
    if "data" not in doc.data:
        raise doc.error((), f"the recipe lacks the required section 'data' ({', '.join(signature_fields(DataSpec))}).")
    raw = doc.data["data"]
    kwargs = read_mapping(doc, ("data",), raw, signature_fields(DataSpec), "data")
    spec = construct(doc, ("data",), raw, lambda: DataSpec(**kwargs))
    for key in DATA_PATHS:
        if kwargs.get(key) is not None and not Path(kwargs[key]).exists():
            raise doc.error(("data", key), f"data.{key}: {raw[key]!r} does not exist (looked for {kwargs[key]}); "
                                           f"{DATA_HELP}.")
    source = next(key for key in ("path", "train", "hub") if kwargs.get(key) is not None)
    construct(doc, ("data", source), None, spec.check)
    return spec


TOP_LEVEL = ("output", "data", "members", "fusers", "ensemble", "report")
MERGE_SECTION = "merge"  # a merge recipe's section (fusion.recipe.merge_recipe), not a build recipe's


@dataclass
class Recipe:
    """A validated recipe: data spec, output directory, report settings, and builders for members, fusers and
    the ensemble (each call builds fresh objects, validated with line numbers)."""

    doc: Document
    output: Path
    data: DataSpec
    report: ReportSpec
    fuser_labels: list[str]

    @classmethod
    def from_document(cls, doc: Document, default_output: Path) -> Recipe:
        """Validate everything (building members, fusers and the ensemble once, which loads no model)."""
        if not isinstance(doc.data, dict):
            raise doc.error((), f"a recipe is a mapping with sections {', '.join(TOP_LEVEL)}; got {describe(doc.data)}.")
        for key in doc.data:
            if key == MERGE_SECTION:
                raise doc.error((key,), f"{key}: is read by `fusion merge {doc.name}` (it writes the merged model); "
                                        "to use a merge in an ensemble, list it under members: with kind: merged.")
            if key not in TOP_LEVEL:
                raise doc.error((key,), unknown_key(key, "the recipe", TOP_LEVEL))
        output = doc.data.get("output")
        if output is not None and not isinstance(output, str):
            raise doc.error(("output",), f"output must be a path (a string), got {describe(output)}.")
        output_dir = doc.resolve_path(("output",), output) if output is not None else default_output
        report = construct(doc, ("report",), doc.data.get("report"), lambda: ReportSpec(
            **read_mapping(doc, ("report",), doc.data.get("report"), signature_fields(ReportSpec), "report")))
        recipe = cls(doc, output_dir, _read_data(doc), report, [])
        recipe.build_ensemble(recipe.build_members())
        fusers = recipe.build_fusers()
        names = [f.kind for f in fusers]
        recipe.fuser_labels = [n if names.index(n) == i else f"{n}-{i}" for i, n in enumerate(names)]
        return recipe

    def build_members(self, show_progress: bool = True) -> list[Member]:
        """Fresh member objects (no model is loaded until they run)."""
        members, seen = [], {}
        for i, value in enumerate(_read_list(self.doc, "members", None)):
            member = read_member(self.doc, ("members", i), value, show_progress)
            if member.name in seen:
                where = ("members", i, "name") if isinstance(value, dict) and "name" in value else ("members", i)
                raise self.doc.error(where, f"members[{i}] is named {member.name!r} like members[{seen[member.name]}]; "
                                            "member names must be unique: set a different name: on one of them.")
            seen[member.name] = i
            members.append(member)
        return members

    def build_fusers(self, show_progress: bool = True) -> list[Fuser]:
        """Fresh, unfitted fusers in the order listed (default, as ``Ensemble(members)``: the default candidates,
        ``fusion.fusers.default_fusers()``, compared with the best member)."""
        default = [fuser.kind for fuser in default_fusers()]
        return [read_component(self.doc, ("fusers", i), value, FUSERS, _make_fuser(show_progress))
                for i, value in enumerate(_read_list(self.doc, "fusers", default))]

    def build_ensemble(self, members: list[Member], labels: list[str] | None = None,
                       fusers: list[Fuser] | None = None) -> Ensemble:
        """An Ensemble of ``members`` and the candidate ``fusers`` with the ``ensemble`` section's options."""
        raw = self.doc.data.get("ensemble")
        kwargs = read_mapping(self.doc, ("ensemble",), raw, signature_fields(Ensemble, ENSEMBLE_SET_ELSEWHERE), "ensemble")
        return construct(self.doc, ("ensemble",), raw, lambda: Ensemble(members, fusers, labels=labels, **kwargs))

    def check_sources(self, members: list[Member]) -> None:
        """Find every Hugging Face member's files (downloading hub models when online) before anything runs."""
        for i, member in enumerate(members):
            source = getattr(member, "source", None)
            if source is None:
                continue
            try:
                source.weights_sha256  # noqa: B018 - resolves the directory and hashes the weights, once
            except FusionError as err:
                raise self.doc.error(("members", i, "model"), f"members[{i}].model: {err}") from err

    def resolved_yaml(self) -> str:
        """The recipe as it ran: command-line overrides applied, relative paths made absolute."""
        header = f"# resolved from {self.doc.name} (overrides applied, relative paths made absolute)\n"
        return header + yaml.safe_dump(self.doc.resolved_data(), sort_keys=False, allow_unicode=True)


def parse_override(text: str) -> tuple[str, Any]:
    """``"members.0.model=path/to/model"`` -> ``("members.0.model", "path/to/model")``; the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set data.limit=200 or --set members.0.model=DIR.")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise RecipeError(f"--set {text!r}: the value is not valid YAML ({err}).") from None


def parse_recipe(text: str, name: str = "recipe.yaml", base: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), *, data: str | None = None,
                 output: str | None = None, limit: int | None = None, engine: str | None = None) -> Recipe:
    """Validate recipe text (see ``load_recipe``); ``base`` is the directory relative paths start from."""
    base = Path(base) if base is not None else Path.cwd()
    doc = parse_yaml(text, name, base)
    if data is not None:
        _set_data_source(doc, data)
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in items:
        doc.set(key, value, f"(--set {key})")
    if output is not None:
        doc.set("output", output, "(--output)")
    if limit is not None:
        doc.set("data.limit", limit, "(--limit)")
    if engine is not None:
        doc.set("ensemble.engine", engine, "(--engine)")
    return Recipe.from_document(doc, Path("out") / Path(name).stem)


def _set_data_source(doc: Document, value: str) -> None:
    if isinstance(doc.data, dict) and isinstance(doc.data.get("data"), dict):
        for key in ("path", "train", "validation", "hub", "config", "revision"):
            if key in doc.data["data"]:
                doc.remove(("data", key))
    if value.startswith("hub:"):
        doc.set("data.hub", value[len("hub:"):], "(--data)")
    else:
        doc.set("data.path", value, "(--data)")


def load_recipe(path: str | os.PathLike, overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), *,
                data: str | None = None, output: str | None = None, limit: int | None = None,
                engine: str | None = None) -> Recipe:
    """Read and validate a recipe file; nothing runs and no model is loaded.

    Args:
        path: the YAML file.
        overrides: ``{"members.0.model": "DIR", ...}`` applied before validation (``fusion build --set``).
        data: replaces the data source: a directory or file, or ``hub:ID`` (``--data``).
        output: replaces ``output`` (``--output``); limit: sets ``data.limit`` (``--limit``).
        engine: sets ``ensemble.engine`` (``--engine``): what computes member outputs, ``"local"`` or ``"ray"``.

    Raises:
        RecipeError: the first problem, with its line and the accepted values.
    """
    path = Path(path)
    return parse_recipe(read_recipe_text(path), str(path), path.resolve().parent, overrides, data=data, output=output,
                        limit=limit, engine=engine)


def read_recipe_text(path: Path) -> str:
    """A recipe file's text; a missing, oversized or non-UTF-8 file is a RecipeError."""
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist; give the path of a YAML recipe file.")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {path.stat().st_size} bytes, more than a recipe may hold ({MAX_RECIPE_BYTES}); "
                          "is it the right file?")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the recipe as UTF-8.") from None
