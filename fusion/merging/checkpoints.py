"""Read one Hugging Face model folder's weights a tensor at a time, and check that checkpoints can be merged.

A :class:`Checkpoint` lists the tensors of ``model.safetensors`` (or of the shards a
``model.safetensors.index.json`` names) from the files' headers, without loading any, and :meth:`Checkpoint.read`
loads one tensor. Only safetensors are read: a pickle file (``pytorch_model.bin``) can run code when it is
loaded, so a folder holding only pickle weights is refused with the way to convert it.

:func:`check_architectures`, :func:`check_names`, :func:`check_shapes`, :func:`check_base` and
:func:`check_buffer` refuse checkpoints that cannot be merged tensor by tensor, before any tensor is merged,
naming the model, the tensor and both sizes.

Example:
    >>> with Checkpoint(HFSource("path/to/model"), "a") as checkpoint:  # doctest: +SKIP
    ...     checkpoint.tensors["classifier.weight"].shape, checkpoint.read("classifier.weight").dtype
    ((2, 32), torch.float32)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ..errors import ConfigError, PersistenceError
from ..io import path_inside
from ..members.hf_source import HFSource

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "model.pth")

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MERGEABLE = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a checkpoint's file header describes it.

    Attributes:
        shape: its size per dimension.
        dtype: its torch dtype (None: a dtype torch has no name for here, never merged).
        file: the safetensors file (inside the model folder) that holds it.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype | None
    file: str

    @property
    def mergeable(self) -> bool:
        """A float16/bfloat16/float32/float64 parameter (merged); anything else (int64 position ids, bool masks,
        float8) is a buffer, copied after checking it is equal across the models."""
        return self.dtype in _MERGEABLE


class Checkpoint:
    """The weights and ``config.json`` of one model folder, read one tensor at a time.

    Args:
        source: where the folder is (a local directory, a hub id in the offline cache, ``package:MODULE``).
        label: how messages name the model (its folder name or hub id, never a path of this machine).

    Raises:
        ConfigError: the folder has no ``config.json``, only pickle weights, or no weights at all.
        PersistenceError: the index names a file outside the folder or a missing shard, or a file is not
            readable safetensors.
    """

    def __init__(self, source: HFSource, label: str) -> None:
        self.source, self.label = source, label
        self.directory = source.local_dir
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"model {label!r}: no config.json in its folder; merging needs a Hugging Face model "
                              "folder (config.json and model.safetensors), as save_pretrained writes it.")
        self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        self._handles: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = self._list()

    # --- listing ---------------------------------------------------------------------------------------------
    def _weight_map(self) -> dict[str, str]:
        """tensor name -> file, from the index of a sharded checkpoint (None for a single file)."""
        index = self.directory / INDEX_FILE
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PersistenceError(f"model {self.label!r}: {INDEX_FILE} is not a safetensors index with a "
                                   f"weight_map ({type(err).__name__}: {err}).") from err
        if not isinstance(weight_map, dict):
            raise PersistenceError(f"model {self.label!r}: the weight_map of {INDEX_FILE} is not a mapping.")
        return {str(name): str(file) for name, file in weight_map.items()}

    def _files(self) -> list[str]:
        if (self.directory / INDEX_FILE).is_file():
            return sorted(set(self._weight_map().values()))
        if (self.directory / SINGLE_FILE).is_file():
            return [SINGLE_FILE]
        pickles = [name for name in PICKLE_FILES if (self.directory / name).is_file()]
        if pickles or any(self.directory.glob("pytorch_model-*.bin")):
            found = pickles[0] if pickles else "pytorch_model-*.bin"
            raise ConfigError(
                f"model {self.label!r} only has pickle weights ({found}); merging reads safetensors only (a pickle "
                "file can run code when it is loaded). Convert it once, in an environment you trust: "
                "AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(new_folder) writes "
                "model.safetensors; or use a revision of the hub repository that has safetensors weights."
            )
        raise ConfigError(f"model {self.label!r}: no {SINGLE_FILE} or {INDEX_FILE} in its folder; nothing to "
                          "merge. Save the model with save_pretrained (safetensors).")

    def _handle(self, file: str) -> Any:
        if file not in self._handles:
            from safetensors import SafetensorError, safe_open

            path = path_inside(self.directory, file, f"model {self.label!r} ({INDEX_FILE})")
            if not path.is_file():
                raise PersistenceError(f"model {self.label!r}: weight file {file} is missing from its folder; "
                                       "download the model again.")
            try:
                self._handles[file] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as err:
                raise PersistenceError(f"model {self.label!r}: {file} is not a readable safetensors file "
                                       f"({err}).") from err
        return self._handles[file]

    def _list(self) -> dict[str, TensorInfo]:
        wanted = self._weight_map() if (self.directory / INDEX_FILE).is_file() else None
        tensors: dict[str, TensorInfo] = {}
        for file in self._files():
            handle = self._handle(file)
            for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if wanted is not None and wanted.get(name) != file:
                    continue  # a shard holding a tensor its index places elsewhere: the index decides
                piece = handle.get_slice(name)
                tensors[name] = TensorInfo(tuple(int(n) for n in piece.get_shape()), _DTYPES.get(piece.get_dtype()),
                                           file)
        if wanted is not None:
            missing = sorted(set(wanted) - set(tensors))
            if missing:
                raise PersistenceError(f"model {self.label!r}: {INDEX_FILE} lists {len(missing)} tensor(s) its "
                                       f"shards do not hold (first: {missing[0]!r}); download the model again.")
        return dict(sorted(tensors.items()))

    # --- reading -----------------------------------------------------------------------------------------------
    def read(self, name: str) -> torch.Tensor:
        """Load tensor ``name`` (and only it) from its file."""
        info = self.tensors.get(name)
        if info is None:
            raise ConfigError(f"model {self.label!r} has no tensor {name!r}.")
        return self._handle(info.file).get_tensor(name)

    @cached_property
    def vocab_size(self) -> int | None:
        """Rows of the vocabulary tensors (``config.vocab_size``, or its ``text_config``'s), None if not given."""
        size = self.config.get("vocab_size")
        if size is None and isinstance(self.config.get("text_config"), dict):
            size = self.config["text_config"].get("vocab_size")
        return int(size) if isinstance(size, int) and not isinstance(size, bool) else None

    def is_vocabulary(self, name: str) -> bool:
        """A tensor with one row per vocabulary entry (an input/output embedding matrix or its bias)."""
        info = self.tensors[name]
        return self.vocab_size is not None and len(info.shape) >= 1 and info.shape[0] == self.vocab_size

    @property
    def architecture(self) -> str:
        """``model_type`` and ``architectures`` as messages show them: ``bert (BertForSequenceClassification)``."""
        return f"{self.config.get('model_type')!s} ({', '.join(self.config.get('architectures') or ['?'])})"

    def close(self) -> None:
        """Release the open files."""
        self._handles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- compatibility checks ---------------------------------------------------------------------------------------


def check_architectures(models: Sequence[Checkpoint], base: Checkpoint | None) -> None:
    """Refuse models of another ``model_type`` or ``architectures`` than the first (the base: of another
    ``model_type``; it may be the bare encoder the classifiers were fine-tuned from)."""
    first = models[0]
    for other in models[1:]:
        if (other.config.get("model_type"), other.config.get("architectures")) != \
                (first.config.get("model_type"), first.config.get("architectures")):
            raise ConfigError(f"cannot merge model {other.label!r}, a {other.architecture} model, with "
                              f"{first.label!r}, a {first.architecture} model: merged models must share one "
                              "architecture (fine-tunes of one checkpoint).")
    if base is not None and base.config.get("model_type") != first.config.get("model_type"):
        raise ConfigError(f"base model {base.label!r} is a {base.architecture} model but {first.label!r} is a "
                          f"{first.architecture} model: the base must be the checkpoint the models were "
                          "fine-tuned from.")


def check_names(models: Sequence[Checkpoint]) -> None:
    """Refuse models whose tensor names differ from the first's, naming a tensor one lacks."""
    first = models[0]
    for other in models[1:]:
        missing = [n for n in first.tensors if n not in other.tensors]
        extra = [n for n in other.tensors if n not in first.tensors]
        if missing or extra:
            lacking, having, name, count = ((other, first, missing[0], len(missing)) if missing
                                            else (first, other, extra[0], len(extra)))
            more = f" (and {count - 1} more)" if count > 1 else ""
            raise ConfigError(f"cannot merge: model {lacking.label!r} has no tensor {name!r}{more}, which "
                              f"{having.label!r} has; merged models must have the same parameters (fine-tunes of "
                              "one checkpoint with the same architecture).")


def vocabulary_rows(models: Sequence[Checkpoint], name: str) -> bool:
    """True when tensor ``name`` has one row per vocabulary entry in every model (its rows may then differ
    between models whose vocabularies differ only by tokens added at the end)."""
    return all(m.is_vocabulary(name) for m in models)


def check_shapes(models: Sequence[Checkpoint], exempt: Callable[[str], bool] = lambda name: False) -> None:
    """Refuse a tensor whose shape differs between models (its name and both shapes), or that is a float in
    one model and a buffer in another. Vocabulary tensors may differ in their row count (see
    :mod:`fusion.merging.vocabulary`); ``exempt`` names tensors not merged (a kept classification head)."""
    first = models[0]
    for name, info in first.tensors.items():
        if exempt(name):
            continue
        rows_may_differ = vocabulary_rows(models, name)
        for other in models[1:]:
            theirs = other.tensors[name]
            same = theirs.shape[1:] == info.shape[1:] if rows_may_differ else theirs.shape == info.shape
            if not same:
                raise ConfigError(f"cannot merge tensor {name!r}: it has shape {info.shape} in {first.label!r} but "
                                  f"{theirs.shape} in {other.label!r}; merged models must have the same sizes "
                                  "(fine-tunes of one checkpoint).")
            if theirs.mergeable != info.mergeable:
                raise ConfigError(f"cannot merge tensor {name!r}: it is {info.dtype} in {first.label!r} but "
                                  f"{theirs.dtype} in {other.label!r}.")


def base_names(models: Sequence[Checkpoint], base: Checkpoint) -> dict[str, str]:
    """The base's name of each of the models' tensors that the base has.

    A classifier's tensors sit under its base-model prefix (``bert.encoder...``) while a bare encoder saved as
    the base has them at the top (``encoder...``); transformers maps one onto the other on load, and so does this.
    Tensors the base lacks (a classification head trained on top of it) are left out.
    """
    prefix = base_model_prefix(models[0].config)
    mapping = {}
    for name in models[0].tensors:
        candidates = [name]
        if prefix:
            candidates += [name[len(prefix) + 1:]] if name.startswith(prefix + ".") else [f"{prefix}.{name}"]
        found = next((c for c in candidates if c in base.tensors), None)
        if found is not None:
            mapping[name] = found
    return mapping


def check_base(models: Sequence[Checkpoint], base: Checkpoint, names: Mapping[str, str],
               exempt: Callable[[str], bool] = lambda name: False) -> None:
    """Refuse a base tensor whose shape differs from the models' (vocabulary rows excepted)."""
    first = models[0]
    if not names:
        raise ConfigError(f"base model {base.label!r} shares no tensor name with {first.label!r}; the base must be "
                          "the checkpoint the models were fine-tuned from.")
    for name, theirs in names.items():
        if exempt(name):
            continue
        mine, its = first.tensors[name], base.tensors[theirs]
        rows_may_differ = vocabulary_rows(models, name) and base.is_vocabulary(theirs)
        same = its.shape[1:] == mine.shape[1:] if rows_may_differ else its.shape == mine.shape
        if not same or its.mergeable != mine.mergeable:
            raise ConfigError(f"cannot merge tensor {name!r}: it has shape {mine.shape} ({mine.dtype}) in "
                              f"{first.label!r} but {its.shape} ({its.dtype}) in the base model {base.label!r} "
                              f"({theirs!r}); the base must be the checkpoint the models were fine-tuned from.")


def check_buffer(models: Sequence[Checkpoint], name: str) -> None:
    """Refuse a buffer (a tensor that is not floating point) whose values differ between the models: it is
    copied from the first model, never averaged. Reads two tensors at a time."""
    first = models[0].read(name)
    for other in models[1:]:
        if not same_tensor(first, other.read(name)):
            raise ConfigError(f"cannot merge: buffer {name!r} ({first.dtype}, not a float parameter) differs between "
                              f"{models[0].label!r} and {other.label!r}; merge methods combine float parameters "
                              "only, so buffers must be equal in every model.")


def base_model_prefix(config: Mapping[str, Any]) -> str | None:
    """The attribute under which a transformers class keeps its base model (``bert`` for
    ``BertForSequenceClassification``), looked up from ``config.architectures`` without building a model;
    None when transformers has no such class (remote code)."""
    import transformers

    for architecture in config.get("architectures") or ():
        try:
            cls = getattr(transformers, str(architecture), None)
        except Exception:  # a lazy import that fails (a missing optional dependency)
            cls = None
        prefix = getattr(cls, "base_model_prefix", None)
        if isinstance(prefix, str) and prefix:
            return prefix
    return None


def same_tensor(first: torch.Tensor, other: torch.Tensor) -> bool:
    """Equal shape, dtype and values: the test for buffers copied rather than merged."""
    return first.shape == other.shape and first.dtype == other.dtype and bool(torch.equal(first, other))

