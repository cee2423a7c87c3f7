"""RESULTS.md: a header that says where and how the numbers were measured, then one table per group."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
from collections.abc import Sequence

import torch

from . import finetune, inference, merging, refit
from .environment import cpu_model, git_revision, package_version
from .results import Row, finetune_table, inference_table, refit_table, scaling_table
from .settings import Settings
from .targets import targets_table

CPU_LABEL = "**CPU run: GPU targets not measurable here.**"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model with its core and thread counts."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def header(settings: Settings, argv: Sequence[str], seconds: float, load: tuple[float, float]) -> str:
    """Date, device, versions, the exact command, sizes, definitions and (on CPU) the CPU label."""
    import fusion

    lines = [
        "# fusion benchmarks",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- device: {device_name(settings.device)}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{package_version('transformers')}, accelerate {package_version('accelerate')}, datasets {package_version('datasets')}, "
        f"fusion {fusion.__version__} (git {git_revision('unknown revision')})",
        f"- command: `python -m benchmarks.run {shlex.join(argv)}`",
        f"- data: {settings.data}; repetitions per workload: {settings.repeats} (medians quoted; ratios are "
        "measured side by side in this run); total wall time "
        f"{seconds / 60:.1f} min",
        "- every fusion repetition starts from an empty memory-only output cache, so fusion tokenises from raw "
        "text and runs every model each time",
        "- useful TFLOP/s = 2 x non-embedding parameters x real (unpadded) tokens / seconds for inference, "
        "6 x ... for training (forward + backward); the same token count for every workload of an encoder",
        f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} cores",
    ]
    if settings.smoke:
        lines.append("- **smoke run**: tiny models built from configs stand in for the real encoders; numbers "
                     "only prove the script runs")
    if not settings.on_cuda:
        lines += ["", CPU_LABEL + " Inference and fine-tuning targets are marked n/a on CPU; peak GPU memory is "
                  "n/a. The machine may be shared with other work: timings are noisy (see the load average)."]
    return "\n".join(lines)


def _section(title: str, note: str, body: str) -> str:
    return f"## {title}\n\n{note}\n\n{body}" if note else f"## {title}\n\n{body}"


def render(settings: Settings, rows: Sequence[Row], argv: Sequence[str], seconds: float,
           load: tuple[float, float]) -> str:
    """The whole RESULTS.md text."""
    parts = [header(settings, argv, seconds, load)]
    groups = {group: [r for r in rows if r.group == group]
              for group in ("inference", "finetune", "refit", "scaling", "merging")}
    if groups["inference"]:
        parts.append(_section("Inference: raw SST-2 sentences to pooled embeddings",
                              "x (a)...x (d): sentences/s over that anchor's, same encoder, same texts. (d) is a "
                              "GPU bound; on CPU its large token-budget batches can be slower than (c).",
                              inference_table(groups["inference"], inference.ANCHORS)))
    if groups["finetune"]:
        parts.append(_section("Fine-tuning: one epoch, load + tokenise + train",
                              "Accuracy on the validation rows, median over repetitions. Trainer trains "
                              "AutoModelForSequenceClassification (pooler + classifier); fusion fine-tunes an "
                              "HFEncoder member (mean pooling + LinearHead). Both decay the learning rate "
                              "linearly to zero; fusion warms up over the first 6% of steps (its default).",
                              finetune_table(groups["finetune"], finetune.ANCHORS)))
    if groups["refit"]:
        parts.append(_section("Cache reuse: refit a fuser on cached member outputs", "",
                              refit_table(groups["refit"], refit.FIRST)))
    if groups["scaling"]:
        parts.append(_section("Scaling: members x examples", "Per-unit cost = seconds per row x member, relative "
                              "to the smallest grid point.", scaling_table(groups["scaling"])))
    if groups["merging"]:
        parts.append(_section(merging.HEADING, merging.note(groups["merging"]),
                              merging.merge_table(groups["merging"])))
    parts.append(_section("Targets", "", targets_table(rows, settings.on_cuda)))
    return "\n\n".join(parts) + "\n"
