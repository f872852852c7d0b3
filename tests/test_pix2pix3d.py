"""3D pix2pix networks and the GAN trainer: parameter counts, shapes, a short real training run, exact resume."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from medfake.tamper.trainset import build_trainset
from medfake.nn.pix2pix3d import PatchDiscriminator3D, UNetGenerator3D
from medfake.tamper.config import PRESETS, AugmentConfig, GanTrainConfig, TrainsetConfig
from medfake.tamper.model import load_tamper_model
from medfake.tamper.train import read_validation, train
from medfake.training import load_checkpoint, read_losses

TINY = dict(g_filters=(4, 8, 16, 16), d_filters=(4, 8, 16, 16), batch_size=4, g_lr=2e-3, d_lr=2e-4, hole=8,
            snapshot_every=5, checkpoint_every=3)


@pytest.fixture(scope="module")
def one_thread():
    """The CI box has 2 shared cores; one intra-op thread is faster for these tiny convolutions."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory, lung1):
    """16³ cubes around lung1's nodule and two healthy lung spots, 11 views each (flips, shifts, 90° turns)."""
    from medfake.data.samples import sample_path

    out = tmp_path_factory.mktemp("pix") / "inject16"
    config = TrainsetConfig("inject", cube=16, augment=AugmentConfig(rotation_step_deg=90))
    table = tmp_path_factory.mktemp("pixcsv") / "locs.csv"
    table.write_text("filename,x,y,z\nlung1,-21.86,-120.54,-611.50\nlung1,-78.70,-120.83,-662.50\n"
                     "lung1,55.89,-139.08,-657.50\n")
    return build_trainset("inject", [sample_path("lung1")], out, coords=table, config=config)


def trainable_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_paper_preset_matches_the_reference_parameter_counts():
    with torch.device("meta"):
        generator = UNetGenerator3D(PRESETS["paper"]["g_filters"])
        discriminator = PatchDiscriminator3D(PRESETS["paper"]["d_filters"])
    assert abs(trainable_parameters(discriminator) - 26_948_301) <= 0.01 * 26_948_301
    assert trainable_parameters(generator) == 162_590_401  # the port is exact, not just within 1 %


def test_cpu_small_shapes_and_architecture():
    config = GanTrainConfig.resolve("inject", "cpu-small")
    generator = UNetGenerator3D(config.g_filters).eval()
    discriminator = PatchDiscriminator3D(config.d_filters)
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    with torch.no_grad():
        y = generator(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0  # tanh output
    assert discriminator(y, x).shape == (2, 1, 2, 2, 2)  # PatchGAN 32/16
    upsamplers = [m for m in generator.modules() if isinstance(m, torch.nn.Upsample)]
    assert upsamplers and all(m.mode == "nearest" for m in upsamplers)
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in generator.modules())
    kernels = {m.kernel_size for m in generator.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels == {(4, 4, 4)}
    assert torch.equal(generator(x), generator(x))  # eval: dropout off, BN running stats -> deterministic
    assert trainable_parameters(generator) < 3_000_000


def test_short_training_decreases_losses_and_resumes_exactly(tiny_set, tmp_path, one_thread):
    config = GanTrainConfig.resolve("inject", "cpu-small", steps=14, **TINY)
    run = train(tiny_set, tmp_path / "straight", config, show_progress=False)
    rows = read_losses(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 15))
    d = [float(r["d_loss"]) for r in rows]
    g = [float(r["g_loss"]) for r in rows]
    assert np.mean(d[-4:]) < np.mean(d[:4])
    assert np.mean(g[-4:]) < 0.8 * np.mean(g[:4])
    assert len(list((run / "snapshots").glob("step_*.png"))) == 3  # 5, 10 and the last step 14
    validation = read_validation(run)
    assert [int(r["step"]) for r in validation] == [5, 10, 14]
    assert 0 < float(validation[-1]["val_l1_hole"]) < float(validation[0]["val_l1_hole"])
    assert (run / "checkpoint.pt").exists() and (run / "losses.png").exists()
    model = load_tamper_model(run)
    assert model.info["step"] == 14  # the last step is saved (CT-GAN never saved its last epoch)
    assert (run / "model" / "equalizer.npz").exists() and "git_commit" in model.info

    # interrupted after 7 steps (half way), then resumed to 14 with a worker process drawing the cubes ahead:
    # the very same weights as the straight run
    config = GanTrainConfig.resolve("inject", "cpu-small", steps=7, **TINY)
    part = train(tiny_set, tmp_path / "resumed", config, show_progress=False)
    train(tiny_set, part, GanTrainConfig.resolve("inject", "cpu-small", **TINY), resume=True, steps=14,
          show_progress=False, data_workers=1)
    assert read_losses(part) == rows  # the log matches, row for row
    assert [int(r["step"]) for r in read_validation(part)] == [5, 7, 10, 14]
    straight, resumed = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    for net in ("generator", "discriminator"):
        assert all(torch.equal(straight[net][k], resumed[net][k]) for k in straight[net])
    assert (straight["epoch"], straight["position"]) == (resumed["epoch"], resumed["position"])


def test_training_refuses_a_set_built_for_the_other_action(tiny_set, tmp_path):
    from medfake.errors import MedfakeError

    with pytest.raises(MedfakeError, match="built to inject"):
        train(tiny_set, tmp_path / "r", GanTrainConfig.resolve("remove", "cpu-small", **TINY), show_progress=False)


def test_train_command_resumes_and_refuses_a_full_folder(tmp_path, capsys, one_thread):
    """`medfake train inject` with the cpu-small preset on 3 lung1 cubes of 32³: 2 steps, resumed to 3."""
    from medfake.cli import main
    from medfake.data.samples import sample_path

    table = tmp_path / "locs.csv"
    table.write_text("filename,x,y,z\nlung1,-21.86,-120.54,-611.50\nlung1,-78.70,-120.83,-662.50\n"
                     "lung1,55.89,-139.08,-657.50\n")
    main(["trainset", "inject", "--scans", str(sample_path("lung1")), "--coords", str(table), "--rotation-step", "0",
          "--shift", "0", "--no-flips", "-o", str(tmp_path / "set")])
    run = tmp_path / "run"
    main(["train", "inject", "--data", str(tmp_path / "set"), "-o", str(run), "--steps", "2", "--seed", "3"])
    main(["train", "inject", "--data", str(tmp_path / "set"), "-o", str(run), "--steps", "3", "--resume"])
    assert [int(r["step"]) for r in read_losses(run)] == [1, 2, 3]
    assert load_tamper_model(run, "inject").info["step"] == 3 and load_tamper_model(run).config.seed == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "inject", "--data", str(tmp_path / "set"), "-o", str(run), "--steps", "4"])
    assert exit_info.value.code == 2 and "--resume" in capsys.readouterr().err


def test_data_order_gives_each_process_its_own_batches_in_step():
    from medfake.tamper.train import DataOrder

    indices = np.arange(40)
    main, other = DataOrder(indices, 8, seed=3), DataOrder(indices, 8, seed=3, rank=1)
    first = [main.next_batch() for _ in range(7)]
    second = [other.next_batch() for _ in range(7)]
    assert (main.epoch, main.position) == (other.epoch, other.position) == (1, 16)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))
    assert np.array_equal(np.sort(np.concatenate(second[:5])), indices)  # still every index once an epoch
    single = DataOrder(indices, 8, seed=3)  # rank 0 shuffles exactly as a single process always did
    assert np.array_equal(single.permutation(), np.random.default_rng([3, 0]).permutation(indices))
