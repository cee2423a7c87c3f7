"""Crash safety of saves, measured: SIGKILLed saves and loads racing saves, counted.

Two ensembles of the same structure (a fine-tuned tiny encoder whose backbone is saved in the folder, a
TF-IDF member, a linear fuser) with different learned state are saved over one folder by forked writers:

* **kills**: a writer saving in a loop is SIGKILLed after a random delay, then the folder is loaded. Counted:
  kills that landed inside a save (staging folder left or the folder missing), loads that failed (a lost
  ensemble), loads that gave a mixture (probabilities matching neither ensemble), staging folders left after
  the load.
* **races**: a writer saves A and B alternately while the parent loads in a loop. Counted: loads that gave A
  or B, clean errors, mixtures.

Only the public API is used, so the same script measures an older checkout (``PYTHONPATH=<checkout>``).

Usage::

    python -m benchmarks.crash_safety --kills 100 --loads 100 --out benchmarks/CRASH_SAFETY.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["a great film", "a dull film", "not bad at all", "the worst plot"]


def _pair(root: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import rival_ensembles
    from tiny_models import make_toy_sentiment, save_bert_encoder

    save_bert_encoder(root / "encoder")
    data = {"train": make_toy_sentiment(240, 0), "validation": make_toy_sentiment(80, 1)}
    pair = rival_ensembles(root / "encoder", data)
    return pair, [ens.predict_proba(TEXTS) for ens in pair]


def _save_forever(pair, directory: Path, start: int) -> None:
    index = start
    while True:
        pair[index % 2].save_pretrained(directory)
        index += 1


def _which(directory: Path, expected) -> str:
    from fusion import Ensemble, FusionError

    try:
        proba = Ensemble.from_pretrained(directory, cache_dir="memory").predict_proba(TEXTS)
    except FusionError as err:
        return f"error: {str(err)[:80]}"
    for index, candidate in enumerate(expected):
        if np.array_equal(proba, candidate):
            return "AB"[index]
    return "mixture"


def _hidden(directory: Path) -> list[str]:
    return [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")]


def measure(kills: int, loads: int, seed: int) -> dict[str, int]:
    fork = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pair, expected = _pair(root)
        directory = root / "ens"
        pair[1].save_pretrained(directory)
        started = time.perf_counter()
        pair[0].save_pretrained(directory)
        one_save = time.perf_counter() - started
        rng = random.Random(seed)
        counts = {"kills": kills, "inside a save": 0, "lost": 0, "mixtures": 0, "staging left after load": 0}
        for kill in range(kills):
            writer = fork.Process(target=_save_forever, args=(pair, directory, kill % 2), daemon=True)
            writer.start()
            time.sleep(rng.uniform(0.0, 3 * one_save))
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
            counts["inside a save"] += bool(_hidden(directory)) or not (directory / "fusion_config.json").exists()
            outcome = _which(directory, expected)
            counts["lost"] += outcome.startswith("error")
            counts["mixtures"] += outcome == "mixture"
            counts["staging left after load"] += bool(_hidden(directory))
        writer = fork.Process(target=_save_forever, args=(pair, directory, 0), daemon=True)
        writer.start()
        race = {"loads": loads, "A": 0, "B": 0, "clean errors": 0, "load mixtures": 0}
        try:
            for _ in range(loads):
                outcome = _which(directory, expected)
                key = {"A": "A", "B": "B", "mixture": "load mixtures"}.get(outcome, "clean errors")
                race[key] += 1
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
    return {**counts, **race}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--loads", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    counts = measure(args.kills, args.loads, args.seed)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    import fusion

    lines = ["# Crash safety of saves", "",
             f"- command: `python -m benchmarks.crash_safety --kills {args.kills} --loads {args.loads} "
             f"--seed {args.seed}`", f"- fusion from: `{Path(fusion.__file__).parent}` (repository at {commit})", "",
             "| count | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
