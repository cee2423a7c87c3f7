"""One measured merge in a process of its own, run by :mod:`benchmarks.merging` (one process per merge, so the
peak memory is this merge's and nothing an earlier one left).

Before the baseline is read, the process runs every way once on two tiny warm-up models (untimed), so lazy
imports and first-call set-up count for no way and every way starts from the same modules in memory; then the
merge is timed and memory is read from ``/proc/self/status``:

* ``peak RSS``: ``VmHWM``, the kernel's high-water mark of resident memory. It counts the pages of the
  checkpoint files that the process has mapped and touched (safetensors maps files; those pages are page cache
  the kernel can drop, not memory the merge holds), so it grows with the bytes read while the files stay open.
* ``peak anonymous``: the largest ``RssAnon`` (memory the process allocated: tensors it built, copies), sampled
  every millisecond by a thread; a spike shorter than that can be missed.

Prints one JSON line: seconds, baseline / peak RSS and peak anonymous memory (MiB).

Usage (what :mod:`benchmarks.merging` runs)::

    python -m benchmarks.merge_worker streaming --warm-up TINY_DIR TINY_DIR --output OUT MODEL_DIR MODEL_DIR ...
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

WEIGHTS = "model.safetensors"
SAMPLE_SECONDS = 0.001


def memory_mib() -> dict[str, float]:
    """``VmRSS``, ``VmHWM`` and ``RssAnon`` of this process in MiB (Linux: ``/proc/self/status``)."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values


class AnonymousPeak:
    """The largest ``RssAnon`` seen while the ``with`` block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, memory_mib()["RssAnon"])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory_mib()["RssAnon"])


def _copy_side_files(source: Path, output: Path) -> None:
    """config.json and the tokenizer files of the first model (everything but its weights)."""
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and not path.name.endswith(".index.json"):
            shutil.copy2(path, output / path.name)


def _average(states: Sequence[dict], names: Sequence[str]) -> dict:
    """Each tensor merged by fusion's ``linear`` (so every way computes the same numbers)."""
    from fusion.merging import LinearMerge, TensorContext

    method = LinearMerge()
    return {name: method.merge_tensor([state[name].float() for state in states], None, TensorContext(name))
            .contiguous() for name in names}


def streaming(models: Sequence[Path], output: Path) -> None:
    """fusion's driver: one tensor of every model at a time from the safetensors files."""
    from fusion.merging import LinearMerge
    from fusion.merging.merge import merge_checkpoints

    merge_checkpoints(models, LinearMerge(), output, show_progress=False)


def naive_safetensors(models: Sequence[Path], output: Path) -> None:
    """Every model's state dict with ``safetensors.torch.load_file`` (memory-mapped), averaged, saved."""
    from safetensors.torch import load_file, save_file

    states = [load_file(model / WEIGHTS) for model in models]
    merged = _average(states, list(states[0]))
    output.mkdir(parents=True)
    save_file(merged, output / WEIGHTS, metadata={"format": "pt"})
    _copy_side_files(models[0], output)


def naive_in_memory(models: Sequence[Path], output: Path) -> None:
    """Every checkpoint read into memory, no memory map (``safetensors.torch.load`` of the file's bytes, as from
    a stream or a file system that cannot map), averaged, ``save_file``: N models in memory at once."""
    from safetensors.torch import load, save_file

    states = [load((model / WEIGHTS).read_bytes()) for model in models]
    merged = _average(states, list(states[0]))
    output.mkdir(parents=True)
    save_file(merged, output / WEIGHTS, metadata={"format": "pt"})
    _copy_side_files(models[0], output)


def naive_transformers(models: Sequence[Path], output: Path) -> None:
    """Every model loaded with ``AutoModelForSequenceClassification.from_pretrained``, the state dicts averaged
    into the first one, ``save_pretrained``."""
    from transformers import AutoModelForSequenceClassification

    loaded = [AutoModelForSequenceClassification.from_pretrained(model) for model in models]
    states = [model.state_dict() for model in loaded]
    loaded[0].load_state_dict(_average(states, list(states[0])))
    loaded[0].save_pretrained(output)
    _copy_side_files(models[0], output)


WAYS: dict[str, Callable[[Sequence[Path], Path], None]] = {
    "streaming": streaming, "naive-safetensors": naive_safetensors, "naive-transformers": naive_transformers,
    "naive-in-memory": naive_in_memory,
}


def has_driver() -> bool:
    """Whether this checkout has fusion's streaming driver (an older one runs only the naive ways)."""
    import importlib.util

    return importlib.util.find_spec("fusion.merging.merge") is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one way, print its JSON line."""
    cli = argparse.ArgumentParser(prog="python -m benchmarks.merge_worker", description=__doc__.split("\n\n")[0])
    cli.add_argument("way", choices=sorted(WAYS))
    cli.add_argument("--output", type=Path, required=True, help="merged model folder (must not exist)")
    cli.add_argument("--warm-up", type=Path, nargs=2, required=True, help="two tiny models merged first, untimed")
    cli.add_argument("models", type=Path, nargs="+")
    args = cli.parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="merge-warm-up-") as scratch:
        for name, way in WAYS.items():
            if name != "streaming" or has_driver():
                way(args.warm_up, Path(scratch) / name)
    baseline = memory_mib()
    with AnonymousPeak() as anonymous:
        start = time.perf_counter()
        WAYS[args.way](args.models, args.output)
        seconds = time.perf_counter() - start
    end = memory_mib()
    print(json.dumps({"way": args.way, "models": len(args.models), "seconds": seconds,
                      "baseline_rss_mib": baseline["VmRSS"], "baseline_anonymous_mib": baseline["RssAnon"],
                      "peak_rss_mib": end["VmHWM"], "peak_anonymous_mib": anonymous.peak}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
