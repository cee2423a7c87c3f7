"""What every Hugging Face member shares: where its files come from and how inference runs (declared once)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import LoadOptions, at_least, digest, is_bool, optional, setting
from ..engine import default_device, resolve_dtype
from ..errors import ConfigError
from .base import Member, MemberConfig
from .hf_source import HFSource, ModelRef, hub_reference, model_ref, model_short_name, reference_kind

_POSITIVE = (optional(at_least(1, integer=True)), "None or an integer >= 1")


@dataclass(frozen=True)
class HFInferenceConfig(MemberConfig):
    """How every Hugging Face member runs its model (everything but where the model comes from; keyword-only, so
    that a kind's own positional fields, such as ``model``, come first).

    Attributes:
        max_length: truncation in tokens (default: the model's limit).
        batch_size: at most this many rows per inference batch (default: only the token budget limits it).
        max_tokens: padded tokens per inference batch (default: from free GPU memory; 2,048 on CPU).
        dtype: weights' dtype for inference: "auto" (bfloat16 on GPUs that support it, float32 on CPU),
            "float32", "bfloat16" or "float16".
        device: where to run (default CUDA when present).
        trust_remote_code: allow custom modelling code from the repository (off by default).
        show_progress: progress bar during inference.
    """

    _: KW_ONLY
    max_length: int | None = None
    batch_size: int | None = setting(None)
    max_tokens: int | None = setting(None)
    dtype: str = "auto"
    device: str | None = setting(None)
    trust_remote_code: bool = False
    show_progress: bool = setting(True)

    constraints: ClassVar = {"max_length": _POSITIVE, "batch_size": _POSITIVE, "max_tokens": _POSITIVE,
                             "trust_remote_code": (is_bool, "True or False"), "show_progress": (is_bool, "True or False")}

    def validate(self) -> None:
        try:
            resolve_dtype(self.dtype, torch.device("cpu"))  # an unknown dtype fails here, not at the first run
        except (ConfigError, ValueError, TypeError) as err:
            raise ConfigError(f"{type(self).__qualname__}.dtype: {err}") from None

    @property
    def resolved_dtype(self) -> torch.dtype:
        """The dtype inference runs in here: ``"auto"`` is bfloat16 on a GPU that supports it, else float32."""
        return resolve_dtype(self.dtype, torch.device(self.device) if self.device else default_device())

    def inference_settings(self) -> dict[str, Any]:
        """These fields by name (what another Hugging Face member built to run alike takes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(HFInferenceConfig) if f.name != "name"}

    def fingerprint_dict(self) -> dict[str, Any]:
        """The fields that change outputs, with ``dtype`` as resolved on this machine: ``"auto"`` computes in
        bfloat16 on a GPU and in float32 on a CPU, and those outputs must not be served to each other."""
        return {**super().fingerprint_dict(), "dtype": str(self.resolved_dtype).removeprefix("torch.")}


def portable_reference(model: str | os.PathLike, revision: str | None) -> tuple[ModelRef, str | None]:
    """``(model, revision)`` as a saved config records them: a snapshot folder of the Hugging Face cache becomes
    its hub id and commit, so a saved ensemble names no path of this machine."""
    model = model_ref(model)
    portable = hub_reference(model)
    if portable is not None and revision in (None, portable[1]):
        return model_ref(portable[0]), portable[1]
    return model, revision


@dataclass(frozen=True)
class HFModelConfig(HFInferenceConfig):
    """Settings of every Hugging Face member that runs one model: where it comes from, and (keyword-only, see
    ``HFInferenceConfig``) how it runs.

    Attributes:
        model: a model directory, a hub id, or ``package:MODULE`` (a model shipped in an installed package).
        revision: hub revision (branch, tag or commit).
    """

    model: ModelRef
    # The model's files are covered by the source's fingerprint, so where they lie does not count.
    revision: str | None = setting(None)

    def __post_init__(self) -> None:
        model, revision = portable_reference(self.model, self.revision)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "revision", revision)
        super().__post_init__()

    def default_name(self) -> str:
        return model_short_name(self.model)

    def fingerprint_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().fingerprint_dict().items() if k != "model"}


class HFInferenceMember(Member):
    """Base of the Hugging Face members: texts in, and outputs computed in a dtype that ``"auto"`` resolves per
    machine (recorded when saved, and keyed apart when loaded where it resolves otherwise)."""

    Config: ClassVar[type[HFInferenceConfig]] = HFInferenceConfig

    @property
    def inputs(self) -> str:
        return "texts"

    def inference_options(self) -> dict[str, Any]:
        """Keyword arguments of ``fusion.engine.run_model`` from the config."""
        c = self.config
        return {"batch_size": c.batch_size, "max_tokens": c.max_tokens, "max_length": c.max_length,
                "device": c.device, "dtype": c.dtype, "show_progress": c.show_progress}

    def fitted_state(self) -> dict[str, Any]:
        return {**super().fitted_state(), "dtype": self._dtype_here()}

    def _dtype_here(self) -> str:
        return str(self.config.resolved_dtype).removeprefix("torch.")

    def _restore(self, fitted: Mapping[str, Any], directory: Path, options: LoadOptions,
                 restored: Mapping[str, Any]) -> HFInferenceMember:
        """As ``Member._restore``; fingerprints recorded where ``dtype="auto"`` resolved otherwise (saved on a GPU,
        loaded on a CPU, or saved before the dtype was recorded) are keyed apart, since outputs here differ."""
        super()._restore(fitted, directory, options, restored)
        here, saved = self._dtype_here(), fitted.get("dtype")
        if saved != here and (saved is not None or self.config.dtype == "auto"):
            self._rekey(here)
        return self

    def _rekey(self, dtype: str) -> None:
        """Make the recorded fingerprints (of outputs computed in another dtype) this machine's own."""
        if self._fingerprint is not None:
            self._fingerprint = digest(self._fingerprint, "computed in", dtype)


class HFMember(HFInferenceMember):
    """Base of the Hugging Face members that run one model: the source of its files (hashed once, shared by
    clones)."""

    Config: ClassVar[type[HFModelConfig]] = HFModelConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = HFSource(self.config.model, self.config.revision)

    def _clone_into(self, twin: HFMember) -> None:
        twin.source = self.source  # shares the hashed checksums

    def _unfitted_fingerprint(self) -> str:
        return digest(self.kind, self.config.fingerprint, self.source.fingerprint)

    def fitted_state(self) -> dict[str, Any]:
        return {**super().fitted_state(), "source": self.source.fitted_state()}

    def local_model_dir(self) -> Path | None:
        """The folder of this machine that the model's files are read from, when the config names one (not a
        hub id, an installed package, or weights saved inside an ensemble); ``save_pretrained(bundle_models=True)``
        copies it into the ensemble."""
        if reference_kind(self.config.model) != "local" or self.source.is_package:
            return None
        return self.source.local_dir

    def _verify_source(self, fitted: Mapping[str, Any], options: LoadOptions) -> None:
        recorded = (fitted.get("source") or {}).get("weights_sha256")
        if options.verify_members and recorded is not None:
            self.source.verify(recorded, self.name)
