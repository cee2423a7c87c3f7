"""The one training loop, used by heads, fusers and member fine-tuning.

Accelerate's :class:`~accelerate.PartialState` supplies the device and the processes (one, or N under
``torchrun`` / ``accelerate launch``); everything that is a choice of the run is ours, so that two runs in one
process may differ and the caller's objects and Accelerate's process-wide state are never touched:

- precision: ``torch.autocast`` around the forward (outputs back in fp32), and a ``torch.amp.GradScaler``
  for fp16 on an accelerator. No ``Accelerator`` is built, as it would fix one ``mixed_precision`` (and reset
  the gradient accumulation steps) for the whole process.
- wrapping: a private module holds the caller's model (autocast), then DDP when distributed, then
  ``torch.compile`` when asked; the caller's model object gets no patched ``forward`` or new attributes.
- batching (no prepared DataLoader, no ``gradient_accumulation_steps``), so that one process and N processes
  make the same updates: every process draws the same permutation, takes its contiguous slice of each global
  micro-batch, and scales its loss so that DDP's gradient average is the gradient of the mean loss over all
  rows of the optimizer step.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from accelerate import PartialState
from accelerate.utils import convert_to_fp32, parse_flag_from_env, reduce
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .batching import grouped_micro_batches, length_sorted_batches, prefetched
from .errors import ConfigError, DataError, FusionError
from .progress import describe, progress_enabled
from .train_config import TrainConfig

__all__ = ["Rows", "TensorRows", "TrainConfig", "TrainResult", "TrainingError", "seeded", "train"]

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]

GPU_ROWS_SHARE = 0.25  # TensorRows up to this share of free GPU memory are moved there once, before training


class TrainingError(FusionError, RuntimeError):
    """Training diverged (a non-finite loss) or a loss function returned the wrong shape."""


@runtime_checkable
class Rows(Protocol):
    """Training or validation rows: anything that returns a CPU batch for a 1-D LongTensor of row indices."""

    def __len__(self) -> int: ...

    def take(self, index: torch.Tensor) -> Batch: ...


class TensorRows:
    """:class:`Rows` over named tensors of equal length (first dimension = rows).

    Raises:
        DataError: No tensors, a value that is not a tensor with a row dimension, or unequal row counts.

    Example:
        >>> rows = TensorRows(x=torch.zeros(4, 3), y=torch.ones(4))
        >>> len(rows), rows.take(torch.tensor([0, 2]))["x"].shape
        (4, torch.Size([2, 3]))
    """

    def __init__(self, **tensors: torch.Tensor) -> None:
        if not tensors:
            raise DataError("TensorRows needs at least one tensor, e.g. TensorRows(x=features, y=labels).")
        bad = [name for name, t in tensors.items() if not isinstance(t, torch.Tensor) or t.ndim == 0]
        if bad:
            raise DataError(f"TensorRows values must be tensors with a row dimension; check {bad}.")
        lengths = {name: int(t.shape[0]) for name, t in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"TensorRows tensors must have the same number of rows; got {lengths}.")
        self.tensors = tensors
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    @property
    def device(self) -> torch.device:
        """Where the tensors are (row indices for :meth:`take` should be there too)."""
        return next(iter(self.tensors.values())).device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to(self, device: torch.device | str) -> TensorRows:
        """The same rows with every tensor on ``device``."""
        return TensorRows(**{name: t.to(device) for name, t in self.tensors.items()})

    def take(self, index: torch.Tensor) -> Batch:
        return {name: t[index] for name, t in self.tensors.items()}


@dataclass
class TrainResult:
    """What :func:`train` did: the 1-based ``best_epoch`` whose weights were kept, ``epochs_run``, the
    monitored ``best_loss`` at that epoch, and ``history``: per epoch ``{"epoch", "train_loss", "val_loss"}``
    (``val_loss`` is None without val rows)."""

    best_epoch: int
    epochs_run: int
    best_loss: float
    history: list[dict] = field(default_factory=list)


class _Autocast(torch.nn.Module):
    """Holds the caller's model and runs its forward under ``torch.autocast`` with outputs cast back to fp32
    (what Accelerate's mixed precision does, without patching the caller's object); ``dtype=None``: plain."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, *args, **kwargs):
        if self.dtype is None:
            return self.model(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            outputs = self.model(*args, **kwargs)
        return convert_to_fp32(outputs)

    def __getattr__(self, name: str):
        """Attributes of the caller's model (``weight``, ``config``, ...) read through the wrapper, so that a
        ``loss_fn`` may use them as with the bare model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


@dataclass
class _Run:
    state: PartialState
    amp: _Autocast  # the caller's model under the run's precision: evaluated through this
    wrapped: torch.nn.Module  # amp in DDP when distributed, compiled when asked: trained through this
    ddp: DistributedDataParallel | None  # inside wrapped, for no_sync
    model: torch.nn.Module  # the caller's object: snapshotted
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 on an accelerator only
    loss_fn: LossFn
    config: TrainConfig
    desc: str


def process_state() -> PartialState:
    """Accelerate's device and processes: the existing PartialState, or a new one that honours
    ``ACCELERATE_USE_CPU`` as ``Accelerator()`` would (CPU processes over gloo under torchrun)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision``: "auto" is bf16 on a CUDA device that supports it, else no
    autocast; "fp16" on CPU runs as fp32 (as in Accelerate)."""
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        requested = "bf16" if cuda_bf16 else "no"
    if requested == "fp16" and device.type == "cpu":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(requested)


def _micro_batches(perm: torch.Tensor, config: TrainConfig, rows: Rows,
                   generator: torch.Generator) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Yields (rows in the optimizer step, its global micro-batches of row indices)."""
    lengths = getattr(rows, "lengths", None)
    if lengths is not None and (config.max_tokens or (config.group_by_length and config.batch_size)):
        micro = grouped_micro_batches(perm, lengths, config.batch_size, config.max_tokens, generator)
        for k in range(0, len(micro), config.grad_accumulation):
            step = micro[k : k + config.grad_accumulation]
            yield sum(map(len, step)), step
        return
    if config.batch_size is None:
        yield len(perm), list(perm.tensor_split(min(config.grad_accumulation, len(perm))))
        return
    for step in perm.split(config.batch_size * config.grad_accumulation):
        yield len(step), list(step.split(config.batch_size))


def _rows_device(rows: Rows) -> torch.device:
    return getattr(rows, "device", torch.device("cpu"))


def _placed(rows: Rows | None, device: torch.device) -> Rows | None:
    """TensorRows moved to the GPU once, when they fit in a share of its free memory: batches are then
    gathered there, with no copy per step."""
    if not isinstance(rows, TensorRows) or device.type != "cuda" or _rows_device(rows) == device:
        return rows
    return rows.to(device) if rows.nbytes <= GPU_ROWS_SHARE * torch.cuda.mem_get_info(device)[0] else rows


def _losses(run: _Run, model: torch.nn.Module, batch: Batch, n: int) -> torch.Tensor:
    batch = {k: v.to(run.state.device, non_blocking=True) for k, v in batch.items()}
    losses = run.loss_fn(model, batch)
    if not isinstance(losses, torch.Tensor) or losses.shape != (n,):
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise TrainingError(
            f"{run.desc}: loss_fn must return per-example losses of shape [{n}] for a batch of "
            f"{n} rows; got {got}. Use reduction='none' in torch losses."
        )
    return losses.float()


def _local(state: PartialState, global_idx: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """This process's slice of a global micro-batch and whether it counts. An empty slice becomes the batch's
    first row with weight 0: still a forward/backward, so DDP's gradient hooks fire on every process."""
    local = global_idx.tensor_split(state.num_processes)[state.process_index]
    return (local, True) if len(local) else (global_idx[:1], False)


def _forward_backward(run: _Run, micro: Iterator[tuple[tuple[torch.Tensor, bool], Batch]], count: int,
                      scale: float) -> torch.Tensor:
    """Forward/backward of the next ``count`` micro-batches of one optimizer step (``((index, counts), batch)``
    each; gradients are synchronised across processes on the last one only); returns this process's detached
    sum of losses."""
    total = torch.zeros((), device=run.state.device)
    for i, ((index, counts), batch) in enumerate(itertools.islice(micro, count)):
        with contextlib.nullcontext() if i == count - 1 or run.ddp is None else run.ddp.no_sync():
            loss_sum = _losses(run, run.wrapped, batch, len(index)).sum()
            run.scaler.scale(loss_sum * (scale if counts else 0.0)).backward()
        if counts:
            total += loss_sum.detach()
    return total


def _set_learning_rate(run: _Run, start: float, end: float) -> None:
    """Warm-up and decay for a step covering ``start``..``end`` of the whole run (as fractions of max_epochs)."""
    config = run.config
    if config.lr_schedule == "constant" and not config.warmup_fraction:
        return
    factor = min(1.0, end / config.warmup_fraction) if config.warmup_fraction else 1.0
    if config.lr_schedule == "linear":
        factor *= min(1.0, max(0.0, (1.0 - start) / (1.0 - config.warmup_fraction)))
    for group in run.optimizer.param_groups:
        group["lr"] = config.learning_rate * factor


def _optimizer_step(run: _Run) -> None:
    """Clip (unscaled) gradients if asked, step (skipped by the fp16 scaler on inf/NaN gradients), clear."""
    if run.config.max_grad_norm is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _train_epoch(run: _Run, rows: Rows, generator: torch.Generator, epoch: int) -> torch.Tensor:
    """One pass over a fresh permutation; returns this process's sum of per-example train losses.

    Batches of host rows bound for a GPU are built ahead on a worker thread in pinned memory; nothing here
    waits for the GPU (losses are summed on the device).
    """
    state, config = run.state, run.config
    perm = torch.randperm(len(rows), generator=generator.manual_seed(config.seed + epoch))
    plan = [(step_rows, [_local(state, g) for g in micro])
            for step_rows, micro in _micro_batches(perm.to(_rows_device(rows)), config, rows, generator)]
    pin = state.device.type == "cuda" and _rows_device(rows).type == "cpu"
    batches = prefetched(lambda item: rows.take(item[0]), [item for _, micro in plan for item in micro], pin)
    total, done = torch.zeros((), device=state.device), 0
    run.wrapped.train()
    for step_rows, micro in plan:
        # DDP averages over processes -> the gradient of the mean loss over the step's rows
        total += _forward_backward(run, batches, len(micro), state.num_processes / step_rows)
        _set_learning_rate(run, (epoch - 1 + done / len(rows)) / config.max_epochs,
                           (epoch - 1 + (done + step_rows) / len(rows)) / config.max_epochs)
        done += step_rows
        _optimizer_step(run)
    return total


def _lbfgs_epoch(run: _Run, rows: Rows, generator: torch.Generator) -> torch.Tensor:
    """One L-BFGS step over the full batch; returns this process's share of the train loss after it.

    The closure returns the loss summed over all processes, so that every process takes the same line-search
    decisions (its gradient is already averaged by DDP).
    """
    state = run.state
    ((step_rows, micro),) = _micro_batches(torch.arange(len(rows), device=_rows_device(rows)), run.config, rows,
                                           generator)
    local = [_local(state, g) for g in micro]
    run.wrapped.train()

    def closure() -> torch.Tensor:
        run.optimizer.zero_grad(set_to_none=True)
        batches = ((item, rows.take(item[0])) for item in local)
        loss_sum = _forward_backward(run, batches, len(local), state.num_processes / step_rows)
        return reduce(loss_sum, reduction="sum") / step_rows

    run.optimizer.step(closure)
    return _loss_sum(run, rows)


@torch.no_grad()
def _loss_sum(run: _Run, rows: Rows) -> torch.Tensor:
    """This process's share of the summed losses in eval mode (rows replicated; each batch split as in
    training), through the run's precision but neither DDP nor the compiled module."""
    state = run.state
    total = torch.zeros((), device=state.device)
    run.amp.eval()
    lengths = getattr(rows, "lengths", None)
    if lengths is not None and run.config.max_tokens:
        batches = [torch.as_tensor(b) for b in length_sorted_batches(lengths, run.config.batch_size, run.config.max_tokens)]
    else:
        batches = torch.arange(len(rows), device=_rows_device(rows)).split(run.config.batch_size or len(rows))
    for global_idx in batches:
        local = global_idx.tensor_split(state.num_processes)[state.process_index]
        if len(local):
            total += _losses(run, run.amp, rows.take(local), len(local)).sum()
    return total


def _changing_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training can change: trainable parameters and buffers (frozen weights need no copy)."""
    params = {f"p:{n}": p for n, p in model.named_parameters() if p.requires_grad}
    return params | {f"b:{n}": b for n, b in model.named_buffers()}


def _epoch_losses(run: _Run, epoch: int, sums: list[torch.Tensor], sizes: list[int]) -> list[float | None]:
    """Mean train (and val) loss over all processes: one reduction, one host sync; raises if not finite."""
    means = [s / n for s, n in zip(reduce(torch.stack(sums), reduction="sum").tolist(), sizes, strict=True)]
    if not all(math.isfinite(m) for m in means):
        losses = ", ".join(f"{name} {m}" for name, m in zip(("train", "val"), means, strict=False))
        raise TrainingError(
            f"{run.desc}: the loss became non-finite in epoch {epoch} ({losses}); "
            f"try a lower learning_rate (now {run.config.learning_rate}) or max_grad_norm, or check the inputs "
            "for NaN/inf."
        )
    return means + [None] * (2 - len(means))


def _fit(run: _Run, train_rows: Rows, val_rows: Rows | None) -> TrainResult:
    config, generator = run.config, torch.Generator()
    sizes = [len(train_rows)] + ([len(val_rows)] if val_rows is not None else [])
    result, best_state = TrainResult(best_epoch=0, epochs_run=0, best_loss=math.inf), {}
    show = config.show_progress and progress_enabled() and run.state.is_main_process
    # With early stopping the run may end long before max_epochs: the bar counts epochs without a total (so
    # it shows no ETA to max_epochs) and names the cap in its postfix.
    stops_early = config.patience is not None
    cap = {"max": f"{config.max_epochs} (early stopping, patience {config.patience})"} if stops_early else {}
    with tqdm(total=None if stops_early else config.max_epochs, desc=describe(run.desc), unit="epoch",
              disable=not show, leave=False, postfix=cap or None) as bar:  # the cap shows from the first draw
        for epoch in range(1, config.max_epochs + 1):
            lbfgs = config.optimizer == "lbfgs"
            sums = [_lbfgs_epoch(run, train_rows, generator) if lbfgs else _train_epoch(run, train_rows, generator, epoch)]
            sums += [_loss_sum(run, val_rows)] if val_rows is not None else []
            train_loss, val_loss = _epoch_losses(run, epoch, sums, sizes)
            result.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            result.epochs_run = epoch
            logger.debug("%s epoch %d: train_loss=%.6g val_loss=%s", run.desc, epoch, train_loss, val_loss)
            bar.set_postfix(
                train=f"{train_loss:.4g}", val="-" if val_loss is None else f"{val_loss:.4g}",
                **cap, refresh=False,
            )
            bar.update(1)
            monitored = train_loss if val_loss is None else val_loss
            if monitored < result.best_loss - config.min_delta:
                result.best_epoch, result.best_loss = epoch, monitored
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in _changing_tensors(run.model).items()
                }
            elif config.patience is not None and epoch - result.best_epoch >= config.patience:
                break
    with torch.no_grad():
        for key, tensor in _changing_tensors(run.model.to("cpu")).items():
            tensor.copy_(best_state[key])
    return result


def _warn_if_alone(state: PartialState, desc: str) -> None:
    """Warns when a launcher started several processes but Accelerate sees one (CPU without the flag)."""
    if state.num_processes == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logger.warning(
            "%s: WORLD_SIZE=%s but Accelerate sees one process, so each process trains alone; on CPU set "
            "ACCELERATE_USE_CPU=1 before anything creates an Accelerator or PartialState.",
            desc,
            os.environ["WORLD_SIZE"],
        )


def _optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device,
               desc: str) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or L-BFGS over the trainable parameters, which must already be on ``device``.

    Raises:
        ConfigError: The model has no trainable parameters.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{desc}: the model has no parameters with requires_grad=True; nothing to train.")
    if config.optimizer == "lbfgs":
        return torch.optim.LBFGS(params, lr=config.learning_rate, line_search_fn="strong_wolfe")
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused)


def _distributed(amp: _Autocast, state: PartialState) -> DistributedDataParallel | None:
    """DDP over Accelerate's process group when there are several processes (the caller's model is inside
    ``amp``, so DDP's wrapping leaves it alone), else None."""
    if state.num_processes == 1:
        return None
    # Unused trainable parameters (e.g. a pretrained pooler nobody calls) would make DDP fail.
    return DistributedDataParallel(amp, find_unused_parameters=True)


def _start(state: PartialState, model: torch.nn.Module, loss_fn: LossFn, config: TrainConfig,
           desc: str) -> _Run:
    """The caller's model moved to the device and wrapped (autocast, DDP, compile: in Accelerate's order), its
    optimizer and gradient scaler."""
    _warn_if_alone(state, desc)
    model.to(state.device)  # before AdamW, so fused=True sees CUDA parameters
    optimizer = _optimizer(model, config, state.device, desc)
    dtype = _autocast_dtype(config.mixed_precision, state.device)
    amp = _Autocast(model, state.device.type, dtype)
    ddp = _distributed(amp, state)
    wrapped = amp if ddp is None else ddp
    wrapped = torch.compile(wrapped) if config.compile else wrapped  # DDP first, so DDPOptimizer applies
    scaler = torch.amp.GradScaler(state.device.type, enabled=dtype == torch.float16)
    return _Run(state, amp, wrapped, ddp, model, optimizer, scaler, loss_fn, config, desc)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's RNG (initial weights, dropout) inside the block and restore the caller's RNG afterwards.

    Example:
        >>> with seeded(0):
        ...     a = torch.rand(1)
        >>> with seeded(0):
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def _check_rows(rows: Rows, name: str, desc: str) -> None:
    if not isinstance(rows, Rows):
        raise DataError(f"{desc}: {name} must have __len__ and take(index); got {type(rows).__name__}.")
    if len(rows) == 0:
        raise DataError(f"{desc}: {name} is empty; training needs at least one row.")


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_rows: Rows,
    config: TrainConfig,
    val_rows: Rows | None = None,
    desc: str = "training",
) -> TrainResult:
    """Train ``model`` in place with AdamW (or L-BFGS), keeping the weights of the best epoch.

    Runs unchanged in one process and under ``torchrun`` (DDP over Accelerate's process group), with the same
    updates up to float rounding. Early stopping monitors the mean per-example val loss if ``val_rows`` is
    given, else the epoch's mean train loss (computed as the epoch's batches went by). Neither the model
    object (no patched ``forward``, no new attributes) nor Accelerate's process-wide state is changed, so
    calls with different ``mixed_precision`` may follow one another and the caller's own ``Accelerator``
    keeps its settings.

    Args:
        model: Trained in place; left on CPU, in eval mode, holding the best epoch's weights.
        loss_fn: ``loss_fn(model, batch)`` returns PER-EXAMPLE losses, shape ``[rows]``. The ``model`` it gets
            is a wrapper around yours (autocast; DDP when distributed; compiled if asked) that reads your
            model's attributes through, but it must call ``model(...)`` itself, not a submodule, so that
            precision and DDP apply to the forward.
        train_rows: Training rows (e.g. :class:`TensorRows`); batches are moved to the device.
        config: Hyper-parameters.
        val_rows: Optional validation rows, the same on every process.
        desc: Names this run in the progress bar, logs and error messages.

    Returns:
        The best epoch, epochs run, best monitored loss and per-epoch history.

    Raises:
        DataError: ``train_rows`` or ``val_rows`` is empty or not a :class:`Rows`.
        ConfigError: The model has no trainable parameters.
        TrainingError: A loss became NaN/inf, or ``loss_fn`` returned the wrong shape.

    Example:
        >>> x = torch.randn(64, 3); y = (x[:, 0] > 0).float()
        >>> def bce(m, b):
        ...     logits = m(b["x"])[:, 0]
        ...     return torch.nn.functional.binary_cross_entropy_with_logits(logits, b["y"], reduction="none")
        >>> result = train(torch.nn.Linear(3, 1), bce, TensorRows(x=x, y=y), TrainConfig(show_progress=False))
        >>> result.history[-1]["train_loss"] < result.history[0]["train_loss"]
        True
    """
    _check_rows(train_rows, "train_rows", desc)
    if val_rows is not None:
        _check_rows(val_rows, "val_rows", desc)
    state = process_state()
    try:
        with seeded(config.seed, state.device):
            run = _start(state, model, loss_fn, config, desc)
            return _fit(run, _placed(train_rows, state.device), _placed(val_rows, state.device))
    finally:
        model.to("cpu").eval()
