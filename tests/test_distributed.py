"""The whole ensemble fit under torchrun with two CPU processes (gloo) matches one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def start_fit(out: Path, encoder_dir: Path, processes: int) -> subprocess.Popen:
    """The script in ``processes`` processes, started (stdout and stderr go to files beside ``out``)."""
    script = Path(__file__).with_name("_ensemble_script.py")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    with open(out.with_suffix(".stdout"), "w") as stdout, open(out.with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen([sys.executable, *launcher, str(script), str(out), str(encoder_dir)], stdout=stdout,
                                stderr=stderr)


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
def test_two_process_ensemble_fit_matches_one_process(bert_encoder_dir, tmp_path):
    # Both at once: much of each is single-threaded imports, which overlap on 2 cores.
    outs = {1: tmp_path / "one.safetensors", 2: tmp_path / "two.safetensors"}
    started = {n: start_fit(out, bert_encoder_dir, n) for n, out in outs.items()}
    try:
        one, two = (fitted(started[n], outs[n]) for n in (1, 2))
    finally:
        for process in started.values():
            process.kill()  # only the other one, if one failed: a finished process ignores it
            process.wait()
    assert int(one["num_processes"]) == 1 and int(two["num_processes"]) == 2
    for fuser in ("linear", "stacking"):
        assert one[fuser].shape == (40, 2)
        torch.testing.assert_close(two[fuser], one[fuser], atol=1e-4, rtol=0)
