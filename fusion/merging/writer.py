"""Write a safetensors file one tensor at a time, so a merge never holds the merged model in memory.

The safetensors format is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and
byte range, plus ``__metadata__``), then the tensors' bytes back to back. A merge knows every output tensor's
name, dtype and shape before it merges any (they follow from the checkpoints' headers), so
:class:`StreamingSafetensors` writes the header first and then each tensor's bytes as it is merged. The file
reads back with ``safetensors.safe_open`` / ``load_file`` and ``transformers``' loaders like one
``save_file`` writes.

Example:
    >>> import torch, tempfile, pathlib
    >>> from safetensors.torch import load_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> with StreamingSafetensors(path, {"w": (torch.float32, (2,))}, {"format": "pt"}) as out:
    ...     out.write("w", torch.tensor([1.0, 2.0]))
    >>> load_file(path)["w"]
    tensor([1., 2.])
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


class StreamingSafetensors:
    """A safetensors file written tensor by tensor, in the order of ``layout``.

    Args:
        path: the file to write.
        layout: every tensor's name -> (dtype, shape), in the order they will be written.
        metadata: the header's ``__metadata__`` (strings).

    Raises:
        ConfigError: a dtype safetensors has no name for; a tensor written out of order or with another dtype
            or shape than its layout; a file closed before every tensor was written.
    """

    def __init__(self, path: str | os.PathLike, layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> None:
        if sys.byteorder != "little":
            raise ConfigError("writing safetensors tensor by tensor needs a little-endian machine.")
        self.layout = dict(layout)
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, (dtype, shape) in self.layout.items():
            if dtype not in SAFETENSORS_DTYPES:
                raise ConfigError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors.")
            size = _nbytes(dtype, shape)
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self._order = iter(self.layout)
        self._handle = open(path, "wb")  # noqa: SIM115 (closed by close() / __exit__)
        self._handle.write(struct.pack("<Q", len(encoded)))
        self._handle.write(encoded)
        self._written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append tensor ``name`` (the next one of the layout), with the layout's dtype and shape."""
        expected = next(self._order, None)
        dtype, shape = self.layout.get(name, (None, None))
        if name != expected or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape or ()):
            raise ConfigError(f"tensor {name!r} ({tensor.dtype}, {tuple(tensor.shape)}) written where the layout "
                              f"expects {expected!r} ({dtype}, {shape}).")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._handle.write(data.numpy().data)
        self._written += 1

    def close(self) -> None:
        """Close the file; ConfigError if some tensor of the layout was not written."""
        if self._handle.closed:
            return
        self._handle.close()
        if self._written != len(self.layout):
            raise ConfigError(f"safetensors file closed after {self._written} of {len(self.layout)} tensors.")

    def __enter__(self) -> StreamingSafetensors:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:  # an error is on its way: close without adding a second one
            self._handle.close()
