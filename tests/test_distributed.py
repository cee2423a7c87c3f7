"""The whole ensemble fit under torchrun with two CPU processes (gloo) matches one process: the processes share
the shards of every large member pass (bit for bit the one process's) and train as one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def start_fit(out: Path, encoder_dir: Path, classifier_dir: Path, processes: int) -> subprocess.Popen:
    """The script in ``processes`` processes, started (stdout and stderr go to files beside ``out``), with a cache
    of its own: nothing one run computes may serve the other."""
    script = Path(__file__).with_name("_ensemble_script.py")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    cache = out.with_suffix(".cache")
    with open(out.with_suffix(".stdout"), "w") as stdout, open(out.with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen([sys.executable, *launcher, str(script), str(out), str(encoder_dir),
                                 str(classifier_dir), str(cache)], stdout=stdout, stderr=stderr,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def fitted(process: subprocess.Popen, out: Path) -> dict[str, torch.Tensor]:
    """What the started script saved, once it exited 0."""
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.returncode == 0, out.with_suffix(".stderr").read_text()[-4000:]
    return load_file(out)


@pytest.mark.slow
def test_two_process_ensemble_fit_matches_one_process(bert_encoder_dir, bert_classifier_dir, tmp_path):
    # Both at once: much of each is single-threaded imports, which overlap on 2 cores.
    outs = {1: tmp_path / "one.safetensors", 2: tmp_path / "two.safetensors"}
    started = {n: start_fit(out, bert_encoder_dir, bert_classifier_dir, n) for n, out in outs.items()}
    try:
        one, two = (fitted(started[n], outs[n]) for n in (1, 2))
    finally:
        for process in started.values():
            process.kill()  # only the other one, if one failed: a finished process ignores it
            process.wait()
    assert int(one["num_processes"]) == 1 and int(two["num_processes"]) == 2
    # 120 training rows, 16 per shard: 8 shards each for the backbone pass, the classifier's outputs and the
    # TF-IDF member's (its inference cost, measured at fit), split 4 + 4 each
    assert one["shards"].tolist() == [24] and two["shards"].tolist() == [12, 12]
    for entry in ("pooled", "clf"):
        assert one[entry].shape[0] == 120 and torch.equal(two[entry], one[entry]), entry
    for fuser in ("linear", "stacking"):
        assert one[fuser].shape == (40, 2)
        torch.testing.assert_close(two[fuser], one[fuser], atol=1e-4, rtol=0)
        assert torch.equal(two[fuser].argmax(1), one[fuser].argmax(1))
