"""The one training loop on 2 processes (gloo on the CPU, as `accelerate launch` starts it): the same weights on
both processes, DDP-averaged gradients over batches each process drew itself, only the main process writes,
and a resumed 2-process run continues bit-exactly. One launch trains all three models (see multiprocess_worker.py).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medfake.training import load_checkpoint

MODELS = ("toy", "pix2pix3d", "ddpm", "detector")  # detector: the BTD detector's own trainer
WORKER = Path(__file__).with_name("multiprocess_worker.py")
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, lung1):
    """Run the worker under `accelerate launch --multi_gpu --num_processes 2` (CUDA hidden: gloo on the CPU)."""
    out = tmp_path_factory.mktemp("multiprocess")
    crop = out / "crop.npy"
    np.save(crop, np.asarray(lung1.voxels[28:38, 300:364, 180:244]))  # around lung1's nodule
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(WORKER), str(out), str(crop)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


OPTIMISERS = ("opt", "opt_g", "opt_d", "medfake_loop")


def checkpoint_path(out: Path, model: str, run: str) -> Path:
    folder = out / "runs" / f"{model}-{run}"
    return folder / ("checkpoint.pt" if model == "detector" else "checkpoints/latest.pt")


def saved(out: Path, name: str) -> dict:
    return torch.load(out / "ranks" / f"{name}.pt")


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model", MODELS)
def test_both_processes_hold_the_same_weights_after_training_on_their_own_batches(launched, model):
    rank0, rank1 = saved(launched, f"{model}-whole-0"), saved(launched, f"{model}-whole-1")
    assert not torch.equal(rank0["first_batch"], rank1["first_batch"])  # each process drew its own batch
    buffers = set(rank0["buffers"])
    parameters = {k: v for k, v in rank0["weights"].items() if k not in buffers}
    assert same_tensors(parameters, {k: v for k, v in rank1["weights"].items() if k not in buffers})
    assert same_tensors(rank0["initial"], rank1["initial"])
    assert not any(torch.equal(v, rank0["initial"][k]) for k, v in parameters.items())  # DDP averaged the grads
    # batch-norm running statistics stay per process under DDP; the main process's are broadcast before every
    # forward and are the ones checkpointed
    checkpoint = load_checkpoint(checkpoint_path(launched, model, "whole"))
    nets = ("model",) if model == "detector" else [k for k in checkpoint if k not in OPTIMISERS]
    stored = {f"{net}.{k}": v for net in nets for k, v in checkpoint[net].items()}
    assert same_tensors(stored, {k: v for k, v in rank0["weights"].items() if k.split(".")[0] in nets})
    loop = checkpoint["medfake_loop"]
    assert loop["step"] == STEPS and len(loop["rng_per_process"]) == 2
    assert not torch.equal(loop["rng_per_process"][0]["torch"], loop["rng_per_process"][1]["torch"])


@pytest.mark.parametrize("model", MODELS)
def test_a_resumed_two_process_run_continues_exactly(launched, model):
    whole, resumed = launched / "runs" / f"{model}-whole", launched / "runs" / f"{model}-part"
    for rank in (0, 1):
        assert same_tensors(saved(launched, f"{model}-whole-{rank}")["weights"],
                            saved(launched, f"{model}-part-{rank}")["weights"])
    with open(whole / "losses.csv") as a, open(resumed / "losses.csv") as b:
        rows_whole, rows_resumed = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [int(r["step"]) for r in rows_whole] == list(range(1, STEPS + 1))
    assert rows_whole == rows_resumed  # the losses, averaged over both processes, agree row for row
    assert (whole / "snapshots" / f"step_{STEPS}.txt").read_text() == \
        (resumed / "snapshots" / f"step_{STEPS}.txt").read_text()


def test_only_the_main_process_writes(launched):
    writes = {rank: json.loads((launched / "ranks" / f"writes-{rank}.json").read_text()) for rank in (0, 1)}
    assert writes[1] == []
    for model in MODELS:  # the hook did see the main process's checkpoints, logs, snapshots and run record
        run = str(launched / "runs" / f"{model}-whole")
        checkpoint = str(checkpoint_path(launched, model, "whole").relative_to(run))
        for name in (checkpoint, "losses.csv", "run.json", "config.json", f"snapshots/step_{STEPS}.txt"):
            folder, _, file = str(Path(run) / name).rpartition(os.sep)
            assert any(folder in w and file in w for w in writes[0]), name  # checkpoints: via a .partial
    record = json.loads((launched / "runs" / "toy-whole" / "run.json").read_text())
    assert record["config"]["processes"] == 2
