"""CycleGAN training on the shared loop (`medfake.training.fit`), and the model folder tampering loads.

Losses as the reference (junyanz `cycle_gan_model.py`): LSGAN; G = adv_AB + adv_BA + λ(|F(G(a))−a|₁ +
|G(F(b))−b|₁) + λ·λ_id(|G(b)−b|₁ + |F(a)−a|₁); D = ½[(D(real)−1)² + D(pooled fake)²] with a pool of 50
earlier fakes. Adam(β₁ 0.5); the learning rate is constant, then decays linearly to 0. Batches are drawn and
augmented (Becker: rotation, scaling, contrast) with the global RNGs, which the loop checkpoints: resume is exact.

Run folder (besides the loop's): checkpoints/latest.pt; model/ (generators.pt with `a2b` = inject and `b2a` =
remove, model.json); snapshots/step_NNNNNN.png (held-out translations) and step_NNNNNN.pt (generators, for
`select_before_artefacts`); grid.csv / grid.png (the artefact monitor).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfake.errors import MedfakeError
from medfake.nn.cyclegan import PatchDiscriminator, ResnetGenerator, init_normal
from medfake.tamper.cyclegan import grid
from medfake.tamper.cyclegan.config import CycleGANConfig
from medfake.tamper.cyclegan.trainset import CycleGANSet

KIND = "cyclegan"
MODEL_JSON, GENERATORS = "model.json", "generators.pt"


def build_generator(config: CycleGANConfig) -> ResnetGenerator:
    return ResnetGenerator(config.channels, config.channels, config.ngf, config.n_blocks, config.upsample)


class ImagePool:
    """The reference's history of generated images: once full, half the time a stored fake is returned
    (and replaced by the new one), so D also sees older generators' output."""

    def __init__(self, size: int):
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image.cpu())
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                k = random.randint(0, self.size - 1)
                out.append(self.images[k].to(image.device))
                self.images[k] = image.cpu()
            else:
                out.append(image)
        return torch.cat(out)


class CycleGANModel:
    """`TrainableModel` for `training.fit`."""

    name = "cyclegan"
    checkpoint_name = "checkpoints/latest.pt"

    def __init__(self, data: CycleGANSet, config: CycleGANConfig):
        self.data, self.config = data, config
        if data.channels != config.channels or tuple(data.size) != tuple(config.size):
            raise MedfakeError("the configuration does not match the training set's size/channels", data.folder)
        self.train_idx, self.val_idx = {}, {}
        for key in ("a", "b"):
            train, val = data.split(key, config.val_fraction, config.seed)
            if len(train) == 0:
                raise MedfakeError(f"domain {key.upper()} has no training images left after the held-out split",
                                   data.folder)
            self.train_idx[key], self.val_idx[key] = train, (val if len(val) else train)
        self.images = {k: torch.from_numpy(data.images(k)) for k in ("a", "b")}

    # --- TrainableModel ------------------------------------------------------------------------------
    def setup(self, accelerator) -> None:
        c = self.config
        self.accelerator = accelerator
        nets = [build_generator(c), build_generator(c), PatchDiscriminator(c.channels, c.ndf),
                PatchDiscriminator(c.channels, c.ndf)]
        for net in nets:
            init_normal(net)
        betas = (c.beta1, 0.999)
        opt_g = torch.optim.Adam(list(nets[0].parameters()) + list(nets[1].parameters()), lr=c.g_lr, betas=betas)
        opt_d = torch.optim.Adam(list(nets[2].parameters()) + list(nets[3].parameters()), lr=c.d_lr, betas=betas)
        prepared = accelerator.prepare(*nets, opt_g, opt_d)
        self.G_ab, self.G_ba, self.D_a, self.D_b, self.opt_g, self.opt_d = prepared
        self.pools = {"a": ImagePool(c.pool_size), "b": ImagePool(c.pool_size)}

    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        for opt, base in ((self.opt_g, c.g_lr), (self.opt_d, c.d_lr)):
            for group in opt.param_groups:
                group["lr"] = base * c.lr_factor(step)
        real_a, real_b = self.batch("a"), self.batch("b")
        with self.accelerator.autocast():
            fake_b, fake_a = self.G_ab(real_a), self.G_ba(real_b)
            rec_a, rec_b = self.G_ba(fake_b), self.G_ab(fake_a)
            adv = lsgan(self.D_b(fake_b), True) + lsgan(self.D_a(fake_a), True)
            cycle = F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b)
            identity = torch.zeros((), device=real_a.device)
            if c.lambda_identity > 0:
                identity = F.l1_loss(self.G_ab(real_b), real_b) + F.l1_loss(self.G_ba(real_a), real_a)
            loss_g = adv + c.lambda_cycle * cycle + c.lambda_cycle * c.lambda_identity * identity
        self.opt_g.zero_grad(set_to_none=True)
        self.accelerator.backward(loss_g)  # D's gradients from this pass are zeroed before D's own step
        self.opt_g.step()
        with self.accelerator.autocast():
            pooled_b, pooled_a = self.pools["b"].query(fake_b), self.pools["a"].query(fake_a)
            d_b = 0.5 * (lsgan(self.D_b(real_b), True) + lsgan(self.D_b(pooled_b.detach()), False))
            d_a = 0.5 * (lsgan(self.D_a(real_a), True) + lsgan(self.D_a(pooled_a.detach()), False))
        self.opt_d.zero_grad(set_to_none=True)
        self.accelerator.backward(d_a + d_b)
        self.opt_d.step()
        return {"g_adv": adv.item(), "cycle_l1": cycle.item(), "identity_l1": identity.item(), "d_a": d_a.item(),
                "d_b": d_b.item(), "lr": c.g_lr * c.lr_factor(step)}

    def state(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"G_ab": unwrap(self.G_ab).state_dict(), "G_ba": unwrap(self.G_ba).state_dict(),
                "D_a": unwrap(self.D_a).state_dict(), "D_b": unwrap(self.D_b).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "pools": {k: p.images for k, p in self.pools.items()}, "config": self.config.to_dict()}

    def load_state(self, state: dict) -> None:
        unwrap = self.accelerator.unwrap_model
        for name in ("G_ab", "G_ba", "D_a", "D_b"):
            unwrap(getattr(self, name)).load_state_dict(state[name])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for key, images in state["pools"].items():
            self.pools[key].images = list(images)
        self.resumed_step = int(state.get("medfake_loop", {}).get("step", 0))

    def snapshot(self, folder: Path, step: int) -> None:
        folder = Path(folder)
        if getattr(self, "resumed_step", None) is not None:
            grid.truncate(folder, self.resumed_step)
            self.resumed_step = None
        generators = self.generator_states()
        write_model_folder(folder, self.config, generators, self.data, {"step": step})
        shots = folder / "snapshots"
        shots.mkdir(exist_ok=True)
        if self.config.keep_snapshots:
            _save_atomic(generators, shots / f"step_{step:06d}.pt")
        scores, previews = self.held_out_translations()
        grid.append_row(folder, step, scores)
        rows = grid.read_rows(folder)
        grid.plot_curves({"A→B": [(int(r["step"]), float(r["a2b"])) for r in rows],
                          "B→A": [(int(r["step"]), float(r["b2a"])) for r in rows]},
                         scores["threshold"], folder / grid.GRID_PNG, title=f"grid score ({self.config.upsample})")
        save_preview(previews, shots / f"step_{step:06d}.png", step)

    # --- helpers -------------------------------------------------------------------------------------
    def batch(self, key: str) -> torch.Tensor:
        pick = np.random.choice(self.train_idx[key], size=self.config.batch_size)
        images = self.images[key][torch.from_numpy(pick)]
        return augment(images, self.config).to(self.accelerator.device)

    def generator_states(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"a2b": {k: v.detach().cpu().clone() for k, v in unwrap(self.G_ab).state_dict().items()},
                "b2a": {k: v.detach().cpu().clone() for k, v in unwrap(self.G_ba).state_dict().items()}}

    def held_out_translations(self) -> tuple[dict, dict]:
        generators = {"a2b": self.G_ab, "b2a": self.G_ba}
        return translate_and_score(generators, self.held_out(), self.accelerator.device, self.config.grid_threshold)

    def held_out(self) -> dict[str, torch.Tensor]:
        """The same number of held-out images of each domain (the grid score's chance level depends on it)."""
        m = max(1, min(self.config.grid_images, *(len(v) for v in self.val_idx.values())))
        return {key: self.images[key][torch.from_numpy(np.asarray(self.val_idx[key][:m]))] for key in ("a", "b")}


@torch.no_grad()
def translate_and_score(generators: dict, held_out: dict, device, threshold: float | None = None) -> tuple[dict, dict]:
    """Grid scores of both directions on the held-out images, the number of images, the threshold (None: the
    chance level for that number) and preview pairs."""
    scores, previews = {}, {}
    for key, name in (("a", "a2b"), ("b", "b2a")):
        G, x = generators[name], held_out[key].to(device)
        training = G.training
        G.eval()
        y = torch.cat([G(x[i: i + 4]) for i in range(0, len(x), 4)]).float().cpu().numpy()
        G.train(training)
        scores[name] = grid.run_score(y, x.float().cpu().numpy())
        previews[name] = (x.float().cpu().numpy()[:4], y[:4])
    scores["score"] = max(scores["a2b"], scores["b2a"])
    scores["images"] = len(held_out["a"])
    scores["threshold"] = float(threshold) if threshold is not None else grid.chance_threshold(len(held_out["a"]))
    return scores, previews


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target)


def augment(images: torch.Tensor, config: CycleGANConfig) -> torch.Tensor:
    """Becker's augmentation on (B, C, H, W) in [-1, 1]: rotation ±r°, scaling, contrast about the mean of the
    foreground (background −1 stays −1), and optional y/x flips (CT patches)."""
    b = images.shape[0]
    angle = (torch.rand(b) * 2 - 1) * np.deg2rad(config.rotation_deg)
    lo, hi = config.scale_range
    scale = lo + torch.rand(b) * (hi - lo)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    if config.flips:
        theta[:, 0, :2] *= torch.where(torch.rand(b) < 0.5, -1.0, 1.0)[:, None]
        theta[:, 1, :2] *= torch.where(torch.rand(b) < 0.5, -1.0, 1.0)[:, None]
    field = F.affine_grid(theta, list(images.shape), align_corners=False)
    # shifted so that zero padding reads as background (−1)
    out = F.grid_sample(images + 1.0, field, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    lo, hi = config.contrast_range
    factor = (lo + torch.rand(b) * (hi - lo))[:, None, None, None]
    fg = out > -0.999
    mean = (out * fg).sum(dim=(1, 2, 3), keepdim=True) / fg.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    return torch.where(fg, ((out - mean) * factor + mean).clamp(-1, 1), out).contiguous()


# --- the model folder --------------------------------------------------------------------------------
def write_model_folder(run: Path, config: CycleGANConfig, generators: dict, data: CycleGANSet, info: dict) -> Path:
    """Replace RUN/model with these generators and the metadata tampering needs (written aside, renamed)."""
    from medfake.runinfo import git_commit

    final, tmp, old = run / "model", run / ".model.partial", run / ".model.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(generators, tmp / GENERATORS)
    meta = {"kind": KIND, "config": config.to_dict(), "trainset": str(data.folder),
            "source": data.index.get("source"), "window": data.index.get("window"),
            "pixel_mm": data.index.get("pixel_mm"), "size": data.index["size"],
            "lesion_diameter_mm": median_lesion_diameter(data), "git_commit": git_commit(), **info}
    (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def median_lesion_diameter(data: CycleGANSet) -> float | None:
    sizes = [it["diameter_mm"] for it in data.index["domains"]["b"]["items"] if it.get("diameter_mm")]
    return float(np.median(sizes)) if sizes else None


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_preview(previews: dict, path: Path, step: int) -> Path:
    """Rows: A, A→B, B, B→A (held-out images)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [("A", previews["a2b"][0]), ("A→B", previews["a2b"][1]), ("B", previews["b2a"][0]),
            ("B→A", previews["b2a"][1])]
    n = max(len(r[1]) for r in rows)
    figure = Figure(figsize=(1.8 * n, 7.2), dpi=80)
    FigureCanvasAgg(figure)
    for r, (name, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = figure.add_subplot(4, n, r * n + c + 1)
            ax.imshow(image.mean(axis=0), cmap="gray", vmin=-1, vmax=1)
            ax.set_axis_off()
            if c == 0:
                ax.set_title(name, fontsize=8, loc="left")
    figure.suptitle(f"step {step}")
    tmp = path.with_name(f".{path.name}.partial.png")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
