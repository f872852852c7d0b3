"""Tiny CT-GAN tamperers trained on lung1 in seconds, shared by the tests through session fixtures in conftest.py
(`tiny_injector`, `tiny_remover`): each is trained once per test session, however many test
files use it. Quality is not the point; each fixture's docstring says what its users rely on."""

from __future__ import annotations

from pathlib import Path

import torch

NODULE_ROW = "lung1,-21.86,-120.54,-611.50\n"  # lung1's nodule (LUNA16 world mm)
HEALTHY_ROWS = "lung1,-78.70,-120.83,-662.50\nlung1,55.89,-139.08,-657.50\n"  # two healthy lung spots


def tiny_tamper_run(root: Path, action: str, rows: str | None = None, *, cube: int = 16, hole: int = 8,
                    filters=((4, 8, 16, 16), (4, 8, 16, 16)), steps: int = 60, auto_healthy: int = 0, seed: int = 0) -> Path:
    """A CT-GAN run on lung1 (one intra-op thread, 90° turns, flips and shifts), trained at the locations in
    `rows` (filename,x,y,z lines) or at `auto_healthy` healthy lung spots; returns the run folder."""
    from medfake.data.samples import sample_path
    from medfake.tamper.config import AugmentConfig, GanTrainConfig, TrainsetConfig
    from medfake.tamper.train import train
    from medfake.tamper.trainset import build_trainset

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root.mkdir(parents=True, exist_ok=True)
        coords = sample_path("lung1").parent / "annotations.csv"
        if rows is not None:
            coords = root / "locs.csv"
            coords.write_text("filename,x,y,z\n" + rows)
        config = TrainsetConfig(action, cube=cube, augment=AugmentConfig(rotation_step_deg=90))
        data = build_trainset(action, [sample_path("lung1")], root / "set", coords=coords, config=config,
                              auto_healthy=auto_healthy, seed=seed)
        g_filters, d_filters = filters
        train_config = GanTrainConfig.resolve(action, "cpu-small", g_filters=g_filters, d_filters=d_filters, cube=cube,
                                              hole=hole, batch_size=4, steps=steps, g_lr=2e-3, d_lr=2e-4,
                                              snapshot_every=steps, checkpoint_every=steps)
        return train(data, root / "run", train_config, show_progress=False)
    finally:
        torch.set_num_threads(before)
