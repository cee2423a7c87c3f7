"""Labelled text splits from disk or the hub, for recipes and the ``fusion`` command.

A dataset directory holds ``train.csv`` (columns ``text``, ``label``; other columns are ignored), optionally
``validation.csv``, and optionally ``labels.json`` (``{"0": "negative", "1": "positive"}``). Splits may also be
``.tsv``, ``.jsonl`` or ``.json`` files. Splits come back as ``{"text": [...], "label": [...]}`` with labels as
names whenever the names are known (``labels:``, ``labels.json`` or a hub dataset's ``ClassLabel``), so ids
are never matched by position across datasets whose label orders differ.

Example:
    >>> spec = DataSpec(path="recipes/data/sst2_sample", limit=100)  # doctest: +SKIP
    >>> splits = load_data(spec)  # doctest: +SKIP
    >>> len(splits.train["text"]), splits.labels  # doctest: +SKIP
    (100, ['negative', 'positive'])
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .inputs import check_texts

__all__ = ["DataSpec", "Splits", "SPLIT_SUFFIXES", "load_data", "load_split", "read_table", "find_split_file"]

Table = dict[str, list[Any]]
ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark (spreadsheet exports) is dropped, not read as text


def _read_delimited(path: Path, delimiter: str) -> Table:
    with open(path, newline="", encoding=ENCODING) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    return {c: [row[c] if row[c] is not None else "" for row in rows] for c in columns}


def _rows_to_table(rows: list[Any], path: Path) -> Table:
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: every record must be a JSON object with named fields (e.g. {{\"text\": ..., \"label\": ...}}).")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return {c: [row.get(c) for row in rows] for c in columns}


def _read_jsonl(path: Path) -> Table:
    rows = []
    with open(path, encoding=ENCODING) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {number}: not valid JSON ({err.msg}).") from err
    return _rows_to_table(rows, path)


def _read_json(path: Path) -> Table:
    try:
        content = json.loads(path.read_text(encoding=ENCODING))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}).") from err
    if isinstance(content, dict) and all(isinstance(v, list) for v in content.values()):
        return {str(k): list(v) for k, v in content.items()}  # columns
    if isinstance(content, list):
        return _rows_to_table(content, path)
    raise DataError(f"{path}: expected a list of records or an object of columns, got {type(content).__name__}.")


def _read_txt(path: Path) -> Table:
    lines = path.read_text(encoding=ENCODING).splitlines()
    return {"text": [line for line in lines if line.strip()]}


READERS: dict[str, Callable[[Path], Table]] = {
    ".csv": lambda p: _read_delimited(p, ","),
    ".tsv": lambda p: _read_delimited(p, "\t"),
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".txt": _read_txt,
}
SPLIT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def read_table(path: str | os.PathLike) -> Table:
    """Columns of a ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.txt`` (one text per non-empty line) file.

    Raises:
        DataError: the file is missing, has another suffix, or cannot be parsed.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(READERS)}.")
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    try:
        return reader(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot be read as {path.suffix} ({err}).") from err


def find_split_file(directory: Path, split: str) -> Path | None:
    """``directory/<split>.csv`` (or .tsv/.jsonl/.json), whichever exists first."""
    return next((directory / f"{split}{s}" for s in SPLIT_SUFFIXES if (directory / f"{split}{s}").is_file()), None)


def _labels_json(directory: Path) -> list[str] | None:
    path = directory / "labels.json"
    if not path.is_file():
        return None
    try:
        mapping = json.loads(path.read_text(encoding=ENCODING))
        return [str(mapping[k]) for k in sorted(mapping, key=int)]
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: expected an object of id -> name, e.g. {{\"0\": \"negative\"}} ({err}).") from err


@dataclass
class DataSpec:
    """Where labelled texts come from: one of ``path``, ``train`` (+ ``validation``) files, or ``hub``.

    Args:
        path: a dataset directory (``train.csv``, optional ``validation.csv`` and ``labels.json``), or one
            file of training rows.
        train: a file of training rows (``.csv``, ``.tsv``, ``.jsonl``, ``.json``); instead of ``path``.
        validation: a file of validation rows (with ``train``).
        hub: a Hugging Face dataset id (or anything ``datasets.load_dataset`` accepts).
        config: the hub dataset's configuration (e.g. ``sst2`` for ``nyu-mll/glue``).
        revision: the hub dataset's revision.
        train_split / validation_split: split names in a hub dataset.
        text_column / label_column: column names in the files or dataset.
        labels: label names in id order (default: ``labels.json`` or the dataset's ClassLabel names).
        validation_fraction: carve this share of the training rows into a validation split (stratified,
            seeded) when the data has none.
        seed: seeds the validation carve and the ``limit`` sample.
        limit: keep at most this many rows per split (a seeded random sample, in file order) for quick runs.
    """

    path: str | os.PathLike | None = None
    train: str | os.PathLike | None = None
    validation: str | os.PathLike | None = None
    hub: str | None = None
    config: str | None = None
    revision: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    validation_fraction: float | None = None
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        sources = [name for name in ("path", "train", "hub") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ConfigError(f"data needs exactly one source: path (a directory or file), train (+ validation) "
                              f"files, or hub (a dataset id); got {sources or 'none'}.")
        if self.validation is not None and self.train is None:
            raise ConfigError("data.validation is a file of validation rows; give the training rows as data.train too.")
        if self.validation_fraction is not None and not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction must be between 0 and 1 (exclusive), got {self.validation_fraction}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be at least 1 row, got {self.limit}.")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"data.labels must be distinct names, got {self.labels}.")

    def has_validation(self) -> bool:
        """Whether the source itself provides a validation split (hub datasets: assumed; checked when loaded)."""
        if self.hub is not None or self.validation is not None:
            return True
        path = Path(self.path) if self.path is not None else None
        return path is not None and path.is_dir() and find_split_file(path, "validation") is not None

    def check(self) -> None:
        """Cheap checks before anything runs: local files exist, and a validation split exists or is carved.

        Raises:
            DataError: a directory without a training file, or no validation split and no ``validation_fraction``.
        """
        if self.path is not None and Path(self.path).is_dir() and find_split_file(Path(self.path), "train") is None:
            present = sorted(p.name for p in Path(self.path).iterdir())[:10]
            raise DataError(f"data directory {self.path} has no train{{{','.join(SPLIT_SUFFIXES)}}} file "
                            f"(it holds {present}).")
        if not self.has_validation() and self.validation_fraction is None:
            raise DataError(f"the data at {self.path or self.train} has no validation split; set "
                            "data.validation_fraction (e.g. 0.1) to carve one from the training rows.")

    def describe(self) -> str:
        if self.hub is not None:
            return f"hub dataset {self.hub}" + (f" ({self.config})" if self.config else "")
        return str(self.path or self.train)


@dataclass
class Splits:
    """Loaded data: ``{"text": [...], "label": [...]}`` per split, and the label names when known."""

    train: Table
    validation: Table | None
    labels: list[str] | None
    carved: bool = False


def _label_value(value: Any, names: list[str] | None) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and (names is None or value not in names):
        value = int(value)  # CSV ids arrive as strings
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and names is not None and 0 <= value < len(names):
        return names[int(value)]
    return value


def _source(spec: DataSpec, split: str) -> str:
    """Where a split's rows come from, as a person would look for them: its file, or the hub dataset's split."""
    if spec.hub is not None:
        return f"{spec.describe()} ({split} split)"
    path = Path(spec.path) if spec.path is not None else None
    if path is not None and path.is_dir():
        found = find_split_file(path, split)
        return str(found) if found is not None else f"{path} ({split})"
    if path is not None:
        return f"{path} ({split})"
    file = spec.train if split == "train" else spec.validation
    return f"{file} ({split})"


def _normalise(table: Table, spec: DataSpec, names: list[str] | None, where: str, need_labels: bool = True) -> Table:
    missing = [c for c in (spec.text_column, spec.label_column if need_labels else None) if c and c not in table]
    if missing:
        option = "text" if missing[0] == spec.text_column else "label"
        raise DataError(f"{where}: no column {missing[0]!r}; the data has columns {list(table)}. Name the column "
                        f"with the recipe key data.{option}_column (fusion build: --set data.{option}_column=NAME; "
                        f"fusion evaluate: --{option}-column NAME).")
    out: Table = {"text": list(table[spec.text_column])}
    if not out["text"]:
        raise DataError(f"{where}: no rows (the file holds no examples, only a header or nothing); add examples.")
    check_texts(out["text"], where, spec.text_column, first_row=1)  # numbered as a person counts rows in the file
    if spec.label_column in table:
        out["label"] = [_label_value(v, names) for v in table[spec.label_column]]
    return out


def _sample(table: Table, limit: int | None, seed: int) -> Table:
    n = len(table["text"])
    if limit is None or n <= limit:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return {c: [values[i] for i in keep] for c, values in table.items()}


def _carve(train: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(train["text"]))
    labels = [str(v) for v in train["label"]]
    try:
        fit_rows, val_rows = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class with a single row cannot be stratified
        fit_rows, val_rows = train_test_split(index, test_size=fraction, random_state=seed)
    pick = lambda rows: {c: [v[i] for i in np.sort(rows)] for c, v in train.items()}  # noqa: E731
    return pick(fit_rows), pick(val_rows)


def _hub_tables(spec: DataSpec, splits: list[str]) -> tuple[dict[str, Table | None], list[str] | None]:
    import datasets

    try:
        loaded = datasets.load_dataset(spec.hub, spec.config, revision=spec.revision)
    except Exception as err:
        raise DataError(f"hub dataset {spec.hub!r} (config {spec.config!r}) cannot be loaded: {type(err).__name__}: "
                        f"{err}. Check the id and config, or download it while online.") from err
    if spec.train_split in splits and spec.train_split not in loaded:
        raise DataError(f"hub dataset {spec.hub!r} has no split {spec.train_split!r}; it has {list(loaded)}.")
    feature = loaded[next(iter(loaded))].features.get(spec.label_column)
    names = list(getattr(feature, "names", None) or []) or None
    tables = {s: (loaded[s].select_columns([c for c in (spec.text_column, spec.label_column)
                                            if c in loaded[s].column_names]).to_dict() if s in loaded else None)
              for s in splits}
    return tables, names


def _local_tables(spec: DataSpec, splits: list[str]) -> tuple[dict[str, Table | None], list[str] | None]:
    path = Path(spec.path) if spec.path is not None else None
    if path is not None and path.is_dir():
        files = {s: find_split_file(path, s) for s in splits}
        names = _labels_json(path)
    elif path is not None:
        files, names = {s: (path if s == splits[0] else None) for s in splits}, None
    else:
        files = {"train": Path(spec.train), "validation": Path(spec.validation) if spec.validation else None}
        files = {s: files.get(s) for s in splits}
        names = None
    return {s: (read_table(f) if f is not None else None) for s, f in files.items()}, names


def load_data(spec: DataSpec) -> Splits:
    """Training and validation splits (validation carved from train when asked), label names, row limits.

    Raises:
        DataError: missing files or columns, unreadable files, or no validation split to use.
    """
    reader = _hub_tables if spec.hub is not None else _local_tables
    raw, found_names = reader(spec, [spec.train_split if spec.hub else "train",
                                     spec.validation_split if spec.hub else "validation"])
    train_raw, val_raw = raw.values()
    names = list(spec.labels) if spec.labels is not None else found_names
    if train_raw is None:
        raise DataError(f"{spec.describe()}: no training split found.")
    train = _normalise(train_raw, spec, names, _source(spec, "train"))
    validation = _normalise(val_raw, spec, names, _source(spec, "validation")) if val_raw is not None else None
    carved = False
    if validation is None and spec.validation_fraction is not None:
        train, validation = _carve(train, spec.validation_fraction, spec.seed)
        carved = True
    train = _sample(train, spec.limit, spec.seed)
    validation = _sample(validation, spec.limit, spec.seed) if validation is not None else None
    return Splits(train, validation, names, carved)


def load_split(spec: DataSpec, split: str) -> tuple[Table, list[str] | None]:
    """One split (``train``, ``validation``, ``test``, ...) as ``{"text", "label"}`` and the label names.

    A single file is that split, whatever its name; a directory must hold ``<split>.csv`` (or .tsv/.jsonl/.json).
    """
    if spec.hub is not None:
        tables, names = _hub_tables(spec, [split])
    else:
        tables, names = _local_tables(spec, [split])
    names = list(spec.labels) if spec.labels is not None else names
    table = tables[split]
    if table is None:
        where = spec.describe()
        files = Path(where).iterdir() if Path(where).is_dir() else []
        available = sorted({p.stem for p in files if p.suffix in SPLIT_SUFFIXES and p.name != "labels.json"})
        raise DataError(f"{where}: no {split!r} split; available splits: {available or 'none'}. Choose one with --split.")
    return _sample(_normalise(table, spec, names, _source(spec, split)), spec.limit, spec.seed), names
