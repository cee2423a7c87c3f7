"""Trains a tiny classifier with ``fusion.training.train`` in one process or under torchrun.

Used by ``tests/test_training.py`` to check that 1 and N processes give the same weights::

    python tests/_train_script.py OUTDIR
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_train_script.py OUTDIR

Two runs in the same processes: fp32, then bf16 (a second, different precision in one process). Every rank
writes ``OUTDIR/rank{r}.json`` (world size, rows its loss_fn saw in the first run, the module types its
loss_fn was given, attributes train() left on the model objects, whether an AcceleratorState exists); rank 0
also writes ``OUTDIR/weights.safetensors`` (first run) and ``OUTDIR/result.json`` (both runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # CPU + gloo even where CUDA exists

import torch  # noqa: E402
from accelerate.state import PartialState, is_initialized  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from fusion.training import TensorRows, TrainConfig, train  # noqa: E402

# 61 train rows in micro-batches of 15 (odd, so slices are 8/7) with grad_accumulation=2: steps of 30, 30, 1;
# the last micro-batch has one row, so rank 1's slice is empty there.
N_TRAIN, N_VAL, N_FEATURES, N_CLASSES = 61, 13, 5, 3


def make_data() -> tuple[TensorRows, TensorRows]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N_TRAIN + N_VAL, N_FEATURES, generator=g)
    y = (x @ torch.randn(N_FEATURES, N_CLASSES, generator=g)).argmax(dim=1)
    y[N_TRAIN : N_TRAIN + 2] = (y[N_TRAIN : N_TRAIN + 2] + 1) % N_CLASSES  # val loss turns up: early stop
    return TensorRows(x=x[:N_TRAIN], y=y[:N_TRAIN]), TensorRows(x=x[N_TRAIN:], y=y[N_TRAIN:])


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, N_CLASSES)
        )
        self.unused = torch.nn.Linear(2, 2)  # trainable but never called, like an unused pretrained pooler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def attributes(model: torch.nn.Module) -> dict[str, list[str]]:
    return {name: sorted(vars(m)) for name, m in model.named_modules()}


def main(outdir: Path) -> None:
    torch.manual_seed(7)
    model, bf16_model = TinyNet(), TinyNet()
    before = attributes(model), attributes(bf16_model)
    rows_seen, wrapped_as = [], set()

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if m.training:
            rows_seen.append(len(batch["y"]))
            wrapped_as.add(type(m).__name__)
        return torch.nn.functional.cross_entropy(m(batch["x"]), batch["y"], reduction="none")

    train_rows, val_rows = make_data()
    config = TrainConfig(
        learning_rate=0.05,
        max_epochs=30,
        batch_size=15,
        grad_accumulation=2,
        patience=3,
        max_grad_norm=1.0,
        seed=3,
        show_progress=False,
    )
    result = train(model, loss_fn, train_rows, config, val_rows=val_rows, desc="multi-process")
    n_rows_seen = len(rows_seen)
    bf16 = train(bf16_model, loss_fn, train_rows, dataclasses.replace(config, mixed_precision="bf16"),
                 val_rows=val_rows, desc="multi-process bf16")
    state = PartialState()  # after train(): PartialState() alone ignores ACCELERATE_USE_CPU (one process)
    assert state.num_processes == int(os.environ.get("WORLD_SIZE", "1")), state.num_processes
    info = {"num_processes": state.num_processes, "rank": state.process_index,
            "rows_seen": rows_seen[:n_rows_seen], "wrapped_as": sorted(wrapped_as),
            "accelerator_state": is_initialized(),
            "attributes_unchanged": (attributes(model), attributes(bf16_model)) == before}
    (outdir / f"rank{state.process_index}.json").write_text(json.dumps(info))
    if state.is_main_process:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, outdir / "weights.safetensors")
        (outdir / "result.json").write_text(json.dumps({"fp32": result.__dict__, "bf16": bf16.__dict__}))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
