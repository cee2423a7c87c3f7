"""Command-line options and the sizes they resolve to on each device and mode."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

GROUPS = ("inference", "bert", "finetune", "refit", "scaling", "merging")
_REPO = Path(__file__).resolve().parent.parent
_SHARED_DATA = _REPO.parent / "shared" / "data" / "sst2"
_SAMPLE_DATA = _REPO / "recipes" / "data" / "sst2_sample"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs: device, sizes, repetitions, where to read and write."""

    device: torch.device
    smoke: bool
    data: Path
    rows: int | None
    bert_rows: int | None
    finetune_rows: int | None
    val_rows: int | None
    refit_rows: int | None
    scale_members: tuple[int, ...]
    scale_rows: tuple[int, ...]
    merge_models: tuple[int, ...]
    repeats: int
    max_tokens: int
    threads: int | None
    seed: int
    skip: frozenset[str]
    out: Path

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    """The ``python -m benchmarks.run`` options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description="Benchmarks of fusion against "
                                "plain-transformers anchors, in one process; writes benchmarks/RESULTS.md.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=Path, help="SST-2 directory (default: ../shared/data/sst2, else the bundled sample)")
    p.add_argument("--rows", type=int, help="inference rows of SST-2 train+validation (default: all on CUDA, 400 on CPU)")
    p.add_argument("--bert-rows", type=int, help="inference rows for the BERT-base-sized encoder (default: --rows on "
                   "CUDA, a sixth of it on CPU)")
    p.add_argument("--finetune-rows", type=int, help="fine-tuning rows of SST-2 train (default: all on CUDA, 256 on CPU)")
    p.add_argument("--val-rows", type=int, help="validation rows for accuracy (default: all 872 on CUDA, 256 on CPU)")
    p.add_argument("--refit-rows", type=int, help="training rows of the cache-reuse ensemble (default: --rows)")
    p.add_argument("--scale-members", type=_ints, help="member counts of the scaling grid (default 2,4,8)")
    p.add_argument("--scale-rows", type=_ints, help="row counts of the scaling grid (default 10000,70000)")
    p.add_argument("--merge-models", type=_ints, help="model counts of the merging group (default 2,4,8; 2 with "
                   "--smoke)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per workload, median quoted (default 3)")
    p.add_argument("--max-tokens", type=int, help="token budget of the device-only anchor (d) (default 65536)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is steadier on a "
                   "machine shared with other work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", "--quick", action="store_true",
                   help="tiny models built from configs, a few hundred rows (used by the test suite)")
    p.add_argument("--skip", action="append", choices=GROUPS, default=[], help="skip a group (repeatable)")
    p.add_argument("--out", type=Path, default=_REPO / "benchmarks" / "RESULTS.md")
    return p


def resolve(args: argparse.Namespace) -> Settings:
    """Fill in the defaults that depend on the device and on ``--smoke``; enforce >= 3 repeats outside smoke."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for, but torch sees no CUDA device.")
    cpu, smoke = args.device == "cpu", args.smoke
    repeats = args.repeats if args.repeats is not None else (1 if smoke else 3)
    if repeats < 1 or (repeats < 3 and not smoke):
        raise SystemExit("error: --repeats must be at least 3 (1 is allowed only with --smoke).")
    rows = args.rows or (96 if smoke else 400 if cpu else None)
    bert_default = rows if rows is None or not cpu else max(rows // 6, 1)
    data = args.data or (_SAMPLE_DATA if smoke or not _SHARED_DATA.is_dir() else _SHARED_DATA)
    small = 64 if smoke else None
    return Settings(
        device=torch.device(args.device), smoke=smoke, data=data, rows=rows,
        bert_rows=args.bert_rows or bert_default,
        finetune_rows=args.finetune_rows or small or (256 if cpu else None),
        val_rows=args.val_rows or small or (256 if cpu else None), refit_rows=args.refit_rows or rows,
        scale_members=args.scale_members or ((2, 4) if smoke else (2, 4, 8)),
        scale_rows=args.scale_rows or ((100, 200) if smoke else (10_000, 70_000)),
        merge_models=args.merge_models or ((2,) if smoke else (2, 4, 8)),
        repeats=repeats, max_tokens=args.max_tokens or (4096 if smoke else 65_536),
        threads=args.threads, seed=args.seed, skip=frozenset(args.skip), out=args.out,
    )
