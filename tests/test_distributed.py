"""The whole ensemble fit under torchrun with two CPU processes (gloo) matches one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def fit_in_processes(out: Path, encoder_dir: Path, processes: int) -> dict[str, torch.Tensor]:
    script = Path(__file__).with_name("_ensemble_script.py")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    done = subprocess.run([sys.executable, *launcher, str(script), str(out), str(encoder_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return load_file(out)


@pytest.mark.slow
def test_two_process_ensemble_fit_matches_one_process(bert_encoder_dir, tmp_path):
    one = fit_in_processes(tmp_path / "one.safetensors", bert_encoder_dir, 1)
    two = fit_in_processes(tmp_path / "two.safetensors", bert_encoder_dir, 2)
    assert int(one["num_processes"]) == 1 and int(two["num_processes"]) == 2
    for fuser in ("linear", "stacking"):
        assert one[fuser].shape == (40, 2)
        torch.testing.assert_close(two[fuser], one[fuser], atol=1e-4, rtol=0)
