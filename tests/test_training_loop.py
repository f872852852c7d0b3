"""The one training loop, on a toy model: exact resume, the loss log, the run record, max_minutes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medfake.errors import MedfakeError
from medfake.training import LoopConfig, TrainableModel, fit, load_checkpoint


class LineFit:
    """y = 3x - 1 from noisy batches drawn with the global RNGs (so resume must restore them)."""

    name = "line"
    checkpoint_name = "checkpoints/latest.pt"

    def setup(self, accelerator):
        self.net = torch.nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        self.net, self.opt = accelerator.prepare(self.net, self.opt)
        self.accelerator = accelerator
        self.snapshots = []

    def train_step(self, step):
        x = torch.randn(8, 1) + float(np.random.standard_normal())
        y = 3 * x - 1 + 0.1 * torch.randn(8, 1)
        loss = torch.mean((self.net(x) - y) ** 2)
        self.opt.zero_grad()
        self.accelerator.backward(loss)
        self.opt.step()
        return {"mse": loss.item(), "weight": self.net.weight.item()}

    def state(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state):
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def snapshot(self, folder, step):
        self.snapshots.append(step)
        (folder / f"snap_{step}.txt").write_text(str(self.net.weight.item()))


def rows(run):
    with open(run / "losses.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_toy_model_satisfies_the_interface():
    assert isinstance(LineFit(), TrainableModel)


def test_resume_continues_exactly(tmp_path):
    whole = fit(LineFit(), tmp_path / "whole", LoopConfig(steps=40, seed=5, checkpoint_every=10, show_progress=False),
                {"toy": 1})
    part = LineFit()
    fit(part, tmp_path / "part", LoopConfig(steps=23, seed=5, checkpoint_every=10, show_progress=False), {"toy": 1})
    assert part.snapshots == [23]  # the last step is always snapshotted
    rest = LineFit()
    fit(rest, tmp_path / "part", LoopConfig(steps=40, seed=5, checkpoint_every=10, show_progress=False), {"toy": 1},
        resume=True)
    a = load_checkpoint(whole / "checkpoints/latest.pt")
    b = load_checkpoint(tmp_path / "part/checkpoints/latest.pt")
    assert a["medfake_loop"]["step"] == b["medfake_loop"]["step"] == 40
    assert torch.equal(a["net"]["weight"], b["net"]["weight"]) and torch.equal(a["net"]["bias"], b["net"]["bias"])
    assert rows(whole) == rows(tmp_path / "part")  # the log matches the weights, row for row
    assert abs(float(rows(whole)[-1]["weight"]) - 3.0) < 0.35  # it did learn the line (starts within ±1)
    assert (whole / "losses.png").stat().st_size > 1000


def test_run_record_and_config(tmp_path):
    run = fit(LineFit(), tmp_path / "r", LoopConfig(steps=3, seed=11, show_progress=False), {"lr": 0.05})
    assert json.loads((run / "config.json").read_text()) == {"lr": 0.05}
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 11 and record["config"]["loop"]["steps"] == 3
    assert record["config"]["device"] == "cpu" and record["config"]["mixed_precision"] == "no"
    assert "torch" in record["versions"] and record["git_commit"]


def test_max_minutes_stops_and_saves_the_step_reached(tmp_path):
    model = LineFit()
    run = fit(model, tmp_path / "t", LoopConfig(steps=1000, max_minutes=0.0, show_progress=False), {})
    assert len(rows(run)) == 1 and model.snapshots == [1]
    assert load_checkpoint(run / "checkpoints/latest.pt")["medfake_loop"]["step"] == 1


def test_refuses_a_full_folder_and_a_missing_checkpoint(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(MedfakeError, match="not empty"):
        fit(LineFit(), tmp_path / "full", LoopConfig(steps=1, show_progress=False), {})
    with pytest.raises(MedfakeError, match="nothing to resume"):
        fit(LineFit(), tmp_path / "none", LoopConfig(steps=1, show_progress=False), {}, resume=True)
