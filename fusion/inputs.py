"""Normalise what users pass as data (datasets.Dataset, a DatasetDict's splits, dict of lists, DataFrame, list or
pandas Series of str, feature arrays, texts with a separate sequence of labels) into TextData."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import Any

import numpy as np

from .errors import DataError


@dataclass(frozen=True)
class SoftTargets:
    """What a student learns from besides the hard labels: a teacher's probabilities ``[rows, classes]`` and how
    to use them (``temperature`` and ``alpha`` of ``fusion.losses.distillation_loss``).

    Example:
        >>> soft = SoftTargets(np.array([[0.8, 0.2], [0.4, 0.6]]), temperature=2.0, alpha=0.5)
        >>> soft.take([1]).probabilities.tolist(), soft.loss_options
        ([[0.4, 0.6]], {'temperature': 2.0, 'alpha': 0.5})
    """

    probabilities: np.ndarray
    temperature: float
    alpha: float

    def take(self, index: Sequence[int] | np.ndarray) -> SoftTargets:
        """The rows at ``index`` (in that order)."""
        return SoftTargets(self.probabilities[np.asarray(index, dtype=np.int64)], self.temperature, self.alpha)

    @property
    def loss_options(self) -> dict[str, float]:
        """The keyword arguments of ``distillation_loss`` besides the tensors."""
        return {"temperature": float(self.temperature), "alpha": float(self.alpha)}

    @property
    def fingerprint(self) -> str:
        """Hash of the probabilities and the settings (part of the data's ``label_fingerprint``)."""
        array = np.ascontiguousarray(self.probabilities, dtype=np.float64)
        head = f"soft|{array.shape}|{float(self.temperature)!r}|{float(self.alpha)!r}|".encode()
        return hashlib.sha256(head + array.tobytes()).hexdigest()


@dataclass(frozen=True)
class TextData:
    """Inputs, optional integer label ids (in the ensemble's label order), and content fingerprints.

    Inputs are texts (a list of str) for text members, or a numeric array ``[rows, ...]`` of features (images,
    tabular rows) for members such as ``TorchMember`` or scikit-learn estimators on arrays.
    ``fingerprint`` hashes the inputs only (member outputs depend on nothing else); ``label_fingerprint``
    also covers the labels, for anything trained on them (out-of-fold outputs), and the soft targets a student
    learns from (``with_soft_targets``), so a distilled fit is never mistaken for a hard-label one.
    """

    texts: list[str] | np.ndarray
    labels: np.ndarray | None = None
    fingerprint: str = field(default="", compare=False)
    label_fingerprint: str = field(default="", compare=False)
    parent: TextData | None = field(default=None, compare=False, repr=False)
    index: np.ndarray | None = field(default=None, compare=False, repr=False)
    soft_targets: SoftTargets | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", _hash_texts(self.texts))
        if not self.label_fingerprint:
            labels = b"" if self.labels is None else np.ascontiguousarray(self.labels, dtype=np.int64).tobytes()
            soft = b"" if self.soft_targets is None else self.soft_targets.fingerprint.encode()
            object.__setattr__(self, "label_fingerprint",
                               hashlib.sha256(self.fingerprint.encode() + labels + soft).hexdigest())

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray) -> TextData:
        """The rows at ``index`` (in that order); remembers its parent (the root dataset) and row positions,
        so per-dataset cached results (embeddings) can be sliced instead of recomputed."""
        index = np.asarray(index, dtype=np.int64)
        labels = None if self.labels is None else self.labels[index]
        root, root_index = (self.parent, self.index[index]) if self.parent is not None else (self, index)
        rows = self.texts[index] if self.is_array else [self.texts[i] for i in index]
        soft = None if self.soft_targets is None else self.soft_targets.take(index)
        return TextData(rows, labels, parent=root, index=root_index, soft_targets=soft)

    def select(self, index: Sequence[int] | np.ndarray) -> TextData:
        """The rows at ``index`` as data of their own (no parent): a member runs on exactly these rows, where a
        ``subset``'s outputs are sliced from the whole dataset's (a cascade asks for a few rows' outputs).

        Example:
            >>> data = TextData(["a", "b", "c"]).select([2, 0])
            >>> data.texts, data.parent is None
            (['c', 'a'], True)
        """
        part = self.subset(index)
        return TextData(part.texts, part.labels, fingerprint=part.fingerprint, soft_targets=part.soft_targets)

    def with_soft_targets(self, probabilities: np.ndarray, temperature: float, alpha: float) -> TextData:
        """A copy whose rows carry a teacher's probabilities ``[rows, classes]`` for a student to learn from
        (``fusion.losses.distillation_loss``); its ``label_fingerprint`` covers them. Subsets keep their rows.

        Raises:
            DataError: probabilities of another number of rows, or not finite.

        Example:
            >>> data = TextData(["good", "bad"], np.array([1, 0]))
            >>> soft = data.with_soft_targets(np.array([[0.3, 0.7], [0.9, 0.1]]), temperature=2.0, alpha=0.5)
            >>> soft.subset([1]).soft_targets.probabilities.tolist(), soft.label_fingerprint != data.label_fingerprint
            ([[0.9, 0.1]], True)
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or len(probabilities) != len(self) or not np.isfinite(probabilities).all():
            raise DataError(f"soft targets: expected finite probabilities [{len(self)} rows, classes], got shape "
                            f"{probabilities.shape}; pass one row of class probabilities per example.")
        return TextData(self.texts, self.labels, fingerprint=self.fingerprint, parent=self.parent, index=self.index,
                        soft_targets=SoftTargets(probabilities, float(temperature), float(alpha)))

    @property
    def is_array(self) -> bool:
        """True when the inputs are a numeric feature array rather than texts."""
        return isinstance(self.texts, np.ndarray)


def _hash_texts(texts: Sequence[str] | np.ndarray) -> str:
    digest = hashlib.sha256()
    if isinstance(texts, np.ndarray):
        array = np.ascontiguousarray(texts)
        digest.update(f"array|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
        return digest.hexdigest()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _instance_of(data: Any, module: str, *names: str) -> bool:
    """``isinstance(data, module.name)`` for any of ``names``, without importing ``module`` (data of a library's
    type exists only once the user has imported it)."""
    loaded = sys.modules.get(module)
    return loaded is not None and any(isinstance(data, getattr(loaded, n, ())) for n in names)


def is_dataset_dict(data: Any) -> bool:
    """True for a ``datasets.DatasetDict`` (or ``IterableDatasetDict``): splits by name, not one dataset."""
    return _instance_of(data, "datasets", "DatasetDict", "IterableDatasetDict")


def _is_series(data: Any) -> bool:
    return _instance_of(data, "pandas", "Series")


def _refuse_dataset_dict(data: Any, where: str) -> DataError:
    splits = list(data)
    example = next((s for s in ("test", "validation", "train") if s in splits), splits[0] if splits else "test")
    return DataError(f"{where}: got a DatasetDict with the splits {splits}, not one dataset; pass one split, "
                     f"e.g. ds[{example!r}].")


def _is_label_sequence(value: Any) -> bool:
    """True for a flat sequence of labels (a list, tuple, 1-D array or pandas Series of scalars), as opposed to
    a dataset (columns), a DatasetDict or a feature array."""
    if isinstance(value, (str, bytes, Mapping, TextData)) or hasattr(value, "column_names") or hasattr(value, "columns"):
        return False
    if isinstance(value, np.ndarray) or _is_series(value):
        return np.ndim(value) == 1
    return isinstance(value, Sequence) and all(isinstance(v, (str, Number, np.generic)) for v in value)


def _has_columns(data: Any) -> bool:
    return isinstance(data, Mapping) or hasattr(data, "column_names") or hasattr(data, "columns")


def fit_arguments(train: Any, second: Any, *, text_column: str = "text",
                  label_column: str = "label") -> tuple[Any, Any]:
    """``Ensemble.fit``'s two positional arguments as (train, validation), each a dataset fusion reads.

    - ``fit(dataset_dict)``: its ``"train"`` split, and its ``"validation"`` split when it has one (a second
      argument, if given, is the validation data instead).
    - ``fit(texts, y)``: texts (a list, pandas Series or feature array) and a flat sequence of labels (list,
      array, Series) become one training dataset; no validation.
    - ``fit(train, validation)``: as given.

    Raises:
        DataError: a DatasetDict without a ``"train"`` split (listing its splits), labels beside a dataset that
            has columns (which labels count?), or labels and texts of different lengths.

    Example:
        >>> fit_arguments(["good", "bad"], [1, 0])
        ({'text': ['good', 'bad'], 'label': [1, 0]}, None)
    """
    if is_dataset_dict(second):
        raise _refuse_dataset_dict(second, "validation")
    if is_dataset_dict(train):
        splits = list(train)
        if "train" not in splits:
            raise DataError(f"train: got a DatasetDict with the splits {splits} and no 'train' split; pass the "
                            f"split to train on, e.g. fit(ds[{splits[0] if splits else 'NAME'!r}], validation).")
        if second is not None and _is_label_sequence(second):
            raise DataError("fit: got a DatasetDict and a sequence of labels; the DatasetDict's splits carry their "
                            f"own labels (column {label_column!r}). Pass fit(ds) or fit(ds['train'], ds['validation']).")
        validation = second if second is not None else (train["validation"] if "validation" in splits else None)
        return train["train"], validation
    if second is None or not _is_label_sequence(second):
        return train, second
    if _has_columns(train) or isinstance(train, TextData):
        raise DataError(f"fit: the first argument is a dataset with columns and the second a sequence of labels; "
                        "it is ambiguous which labels count. Pass labels either as the dataset's column "
                        f"{label_column!r} (fit(dataset)) or beside a list of texts (fit(texts, labels)).")
    texts = [train] if isinstance(train, str) else train
    labels = second.tolist() if hasattr(second, "tolist") else list(second)
    if len(texts) != len(labels):
        raise DataError(f"fit: got {len(texts)} texts but {len(labels)} labels; pass one label per text.")
    return {text_column: texts.tolist() if _is_series(texts) else texts, label_column: labels}, None


def dataset_label_names(data: Any, label_column: str) -> list[str] | None:
    """Label names declared by a ``datasets.ClassLabel`` column, if any."""
    features = getattr(data, "features", None)
    feature = features.get(label_column) if features is not None else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _columns(data: Any) -> list[str]:
    if hasattr(data, "column_names"):
        return list(data.column_names)
    if hasattr(data, "columns"):
        return [str(c) for c in data.columns]
    return list(data.keys())


def column_values(data: Any, name: str, where: str) -> list[Any]:
    """The values of one column; a missing column raises DataError listing the ones present, and data that has
    no columns (a generator, a number) one listing what is accepted."""
    if not (isinstance(data, Mapping) or hasattr(data, "column_names") or hasattr(data, "columns")):
        raise DataError(f"{where}: got {type(data).__name__}; pass a list of texts, a dict of columns "
                        "(e.g. {'text': [...], 'label': [...]}), a pandas DataFrame or a datasets.Dataset"
                        + (" (a generator can be read only once: pass a list of its items)" if
                           isinstance(data, Iterator) else "") + ".")
    columns = _columns(data)
    if name not in columns:
        raise DataError(
            f"{where}: no column {name!r}; the data has columns {columns}. "
            f"Rename the column or pass text_column=/label_column= to the Ensemble."
        )
    values = data[name]
    return values.tolist() if hasattr(values, "tolist") else list(values)


def check_texts(texts: Sequence[Any], where: str, column: str | None = None, *, first_row: int = 0) -> list[str]:
    """Texts as a list of str; refuses (DataError naming the row) a value that is not a string (None, a number,
    a list), an empty or blank text, and an unpaired surrogate (what an undecodable byte becomes under
    ``errors="surrogateescape"``, e.g. in ``sys.argv``), which no tokenizer can encode.

    The one check of texts for the Python API and the ``fusion`` command alike. Rows are numbered from
    ``first_row``: 0 for Python sequences, 1 where a person counts data rows in a file (the command line).

    Example:
        >>> check_texts(["good", None], "data")
        Traceback (most recent call last):
        ...
        fusion.errors.DataError: data: row 1 is NoneType (None), not a string; drop or fill missing texts first.
    """
    place = f"{where}: column {column!r} row" if column is not None else f"{where}: row"
    counted = " (counted from 1)" if first_row == 1 else ""
    for row, text in enumerate(texts, first_row):
        if not isinstance(text, str):
            raise DataError(
                f"{place} {row}{counted} is {type(text).__name__} ({text!r}), not a string; "
                "drop or fill missing texts first."
            )
        if not text.strip():
            raise DataError(f"{place} {row}{counted} is an empty text ({text!r}); "
                            "drop that row or fill it in.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(
                f"{place} {row}{counted} holds {text[err.start]!r} at character "
                f"{err.start}, an unpaired surrogate that is not valid Unicode (an undecodable byte, such as invalid "
                "UTF-8 read with errors='surrogateescape'); decode the source as UTF-8 or remove that character."
            ) from None
    return list(texts)


def _check_texts(texts: list[Any], where: str, column: str | None) -> list[str] | np.ndarray:
    """Texts as a list of str, or numeric rows (vectors, images) as one float32 array."""
    place = f"column {column!r}" if column is not None else "the data"
    if texts and not isinstance(texts[0], str) and np.ndim(texts[0]) >= 1:
        try:
            array = np.asarray(texts, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: {place} holds rows of different shapes or non-numbers ({err}).") from err
        if not np.isfinite(array).all():
            raise DataError(f"{where}: {place} holds NaN or inf features; impute or drop those rows.")
        return array
    return check_texts(texts, where, column)


def encode_labels(raw: list[Any], label_names: Sequence[str], where: str, column: str) -> np.ndarray:
    """Map label values (ids or names) to ids in ``label_names`` order."""
    index = {name: i for i, name in enumerate(label_names)}
    ids = np.empty(len(raw), dtype=np.int64)
    for row, value in enumerate(raw):
        if isinstance(value, str) and value in index:
            ids[row] = index[value]
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(label_names):
            ids[row] = int(value)
        else:
            raise DataError(
                f"{where}: column {column!r} row {row} has label {value!r}, which is neither a label name in "
                f"{list(label_names)} nor an id in 0..{len(label_names) - 1}. Fix the data or the ensemble's labels=."
            )
    return ids


def as_text_data(
    data: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    require_labels: bool = False,
    where: str = "data",
) -> TextData:
    """Turn user data into TextData.

    Args:
        data: a ``datasets.Dataset``, a mapping of column -> list, a pandas DataFrame, a list or pandas Series
            of strings, or a single string (a ``DatasetDict`` is refused, naming its splits: pass one).
        text_column / label_column: column names.
        label_names: the ensemble's label names; string labels are looked up in it, ids must be in range.
            When the data declares ClassLabel names in another order, ids are mapped by name.
        require_labels: raise if the label column is absent.
        where: how error messages name this data ("train", "validation", ...).

    Raises:
        DataError: empty data, a missing column, a non-string text, an unknown label or a DatasetDict.

    Example:
        >>> as_text_data({"text": ["good", "bad"], "label": [1, 0]}, label_names=["neg", "pos"]).labels
        array([1, 0])
    """
    if is_dataset_dict(data):
        raise _refuse_dataset_dict(data, where)
    if _is_series(data):
        data = data.tolist()  # a pandas Series of texts reads like a list
    if isinstance(data, TextData):
        texts, raw_labels = data.texts, None if data.labels is None else data.labels.tolist()
    elif isinstance(data, str):
        texts, raw_labels = [data], None
    elif isinstance(data, np.ndarray) or (isinstance(data, Sequence) and not isinstance(data, Mapping)):
        texts, raw_labels = _check_texts(list(data), where, None), None
    else:
        texts = _check_texts(column_values(data, text_column, where), where, text_column)
        has_labels = label_column in _columns(data)
        if require_labels and not has_labels:
            column_values(data, label_column, where)  # raises the missing-column error
        raw_labels = column_values(data, label_column, where) if has_labels else None
        if raw_labels is not None and len(raw_labels) != len(texts):
            raise DataError(f"{where}: column {text_column!r} has {len(texts)} rows but column {label_column!r} has "
                            f"{len(raw_labels)}; every column needs one value per row. Fix the data.")
        declared = dataset_label_names(data, label_column)
        if raw_labels is not None and declared and label_names and list(declared) != list(label_names):
            # align ClassLabel ids by name, never by position; ids out of range (-1: no label) stay as they
            # are, so encode_labels reports them
            raw_labels = [declared[i] if isinstance(i, int) and 0 <= i < len(declared) else i for i in raw_labels]
    if len(texts) == 0:
        raise DataError(f"{where}: the data has no rows; pass at least one example.")
    if require_labels and raw_labels is None:
        raise DataError(f"{where}: labels are required here, but the data has none (a plain list of texts).")
    labels = None
    if raw_labels is not None and label_names is not None:
        labels = encode_labels(raw_labels, label_names, where, label_column)
    return TextData(texts, labels)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Seeded split of ``n`` rows into (fit rows, early-stopping rows); no split if too few rows."""
    n_hold = int(round(n * fraction))
    if fraction <= 0 or n_hold < 1 or n - n_hold < 1:
        return np.arange(n), None
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])
