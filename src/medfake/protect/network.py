"""The `network` method: a feed-forward protector (MITS-GAN-style, one pass per scan) trained over a cohort
on the shared loop `medfake.training.fit`, with the same objective as `optimize` (`site_loss`) computed
through the differentiable tamperer, and a hard budget by construction: δ = budget·tanh(net(x)).

Each step draws sites (lung voxels for injectors, CAD nodules for removers) in random cohort scans, runs
the protector on the crop the tamperer would read, and back-propagates the tamperer's core HU into it.
Run folder: the loop's files + `model/protector.pt` (state dict) and `model/protector.json`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medfake.errors import MedfakeError
from medfake.nn.protector import ResidualProtector3D
from medfake.protect.optimize import local_crop, site_loss
from medfake.protect.surrogate import Surrogate
from medfake.scan import Scan

TILE, HALO = 96, 6  # inference tiles (y, x) and the halo each side (≥ the receptive field)


@dataclass
class ProtectorConfig:
    budget_hu: float = 8.0
    region: str = "lungs"
    channels: int = 16
    blocks: int = 3
    sites_per_step: int = 4
    lr: float = 3e-3
    steps: int = 300
    seed: int = 0


@dataclass
class Cohort:
    scans: list[Scan]
    lungs: list[np.ndarray]
    lung_points: list[np.ndarray]  # (n, 3) lung voxels per scan (subsampled)
    nodules: list[list[tuple[int, int, int]]]
    sigmas: list[float]

    @classmethod
    def build(cls, scans: list[Scan], need_nodules: bool) -> "Cohort":
        from medfake.lungmask import lung_mask, lung_parenchyma
        from medfake.protect.surrogate import estimate_noise

        lungs, points, nodules, sigmas = [], [], [], []
        for scan in scans:
            lung = lung_mask(scan)
            if not lung.any():
                raise MedfakeError("no lungs found in this scan: protection is for chest CT", scan.path)
            lungs.append(lung)
            points.append(np.argwhere(lung[:, ::4, ::4]) * np.array([1, 4, 4]))
            if need_nodules:
                from medfake.cad import detect_nodules

                nodules.append([n.center_zyx for n in detect_nodules(scan, lung)])
            else:
                nodules.append([])
            parenchyma = lung_parenchyma(scan, lung)
            sigmas.append(estimate_noise(scan, parenchyma, (8, 8, 8), np.random.default_rng(0)).sigma)
        return cls(scans, lungs, points, nodules, sigmas)


class ProtectorTrainer:
    """`TrainableModel` for `medfake.training.fit`."""

    name = "protector"
    checkpoint_name = "checkpoints/latest.pt"

    def __init__(self, cohort: Cohort, surrogates: list[Surrogate], config: ProtectorConfig):
        self.cohort, self.surrogates, self.config = cohort, surrogates, config

    def setup(self, accelerator) -> None:
        self.accelerator = accelerator
        self.net = ResidualProtector3D(self.config.channels, self.config.blocks)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        self.net, self.opt = accelerator.prepare(self.net, self.opt)
        self.device = accelerator.device
        for s in self.surrogates:
            s.generator.to(self.device)

    def draw(self):
        """A (surrogate, scan index, site) the attacker might use (global RNG: restored on resume)."""
        surrogate = self.surrogates[np.random.randint(len(self.surrogates))]
        i = np.random.randint(len(self.cohort.scans))
        pool = self.cohort.nodules[i] if surrogate.action == "remove" else self.cohort.lung_points[i]
        if len(pool) == 0:
            pool = self.cohort.lung_points[i]
        return surrogate, i, tuple(int(v) for v in pool[np.random.randint(len(pool))])

    def train_step(self, step: int) -> dict[str, float]:
        self.net.train()
        total = 0.0
        for _ in range(self.config.sites_per_step):
            surrogate, i, zyx = self.draw()
            scan = self.cohort.scans[i]
            box, local_scan, local_zyx = local_crop(scan, surrogate, zyx)
            x = torch.from_numpy(np.asarray(local_scan.voxels, dtype=np.float32))
            delta = self.net(x[None, None].to(self.device), self.config.budget_hu)[0, 0].cpu()
            if self.config.region == "lungs":
                delta = delta * torch.from_numpy(self.cohort.lungs[i][box])
            geo = surrogate.geometry(local_scan, local_zyx)
            total = total + site_loss(surrogate, x + delta, local_scan, geo, self.cohort.sigmas[i])
        loss = total / self.config.sites_per_step
        self.opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.opt.step()
        return {"core_hu": float(loss.detach()) * 100.0}

    def state(self) -> dict:
        return {"net": self.accelerator.unwrap_model(self.net).state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.accelerator.unwrap_model(self.net).load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def snapshot(self, folder: Path, step: int) -> None:
        model = Path(folder) / "model"
        model.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(self.net).state_dict().items()}
        torch.save(state, model / "protector.pt")
        meta = {"kind": "medfake protector", "config": asdict(self.config), "step": step,
                "against": [s.model_id for s in self.surrogates], "actions": [s.action for s in self.surrogates]}
        (model / "protector.json").write_text(json.dumps(meta, indent=2))


def train_protector(scans: list[Scan], surrogates: list[Surrogate], out: str | Path, config: ProtectorConfig,
                    show_progress: bool = True, resume: bool = False) -> Path:
    from medfake.training import LoopConfig, fit

    if config.budget_hu <= 0:
        raise MedfakeError(f"the budget must be a positive number of HU, not {config.budget_hu:g}")
    cohort = Cohort.build(scans, any(s.action == "remove" for s in surrogates))
    loop = LoopConfig(steps=config.steps, seed=config.seed, checkpoint_every=max(config.steps, 1),
                      snapshot_every=max(config.steps, 1), show_progress=show_progress, mixed_precision="no")
    record = dict(asdict(config), against=[s.model_id for s in surrogates], scans=[str(s.path) for s in scans])
    return fit(ProtectorTrainer(cohort, surrogates, config), out, loop, record, resume=resume)


@dataclass
class Protector:
    net: ResidualProtector3D
    meta: dict
    model_id: str

    @torch.no_grad()
    def perturbation(self, scan: Scan, allowed: np.ndarray, budget_hu: float) -> np.ndarray:
        """δ for the whole scan, tile by tile (y, x) with a halo, so memory stays small."""
        voxels = np.asarray(scan.voxels, dtype=np.float32)
        out = np.zeros(voxels.shape, dtype=np.float32)
        zn, yn, xn = voxels.shape
        for y0 in range(0, yn, TILE):
            for x0 in range(0, xn, TILE):
                ys, xs = slice(max(y0 - HALO, 0), min(y0 + TILE + HALO, yn)), slice(max(x0 - HALO, 0),
                                                                                    min(x0 + TILE + HALO, xn))
                if not allowed[:, y0:y0 + TILE, x0:x0 + TILE].any():
                    continue
                tile = torch.from_numpy(np.ascontiguousarray(voxels[:, ys, xs]))[None, None]
                d = self.net(tile, budget_hu)[0, 0].numpy()
                oy, ox = y0 - ys.start, x0 - xs.start
                out[:, y0:y0 + TILE, x0:x0 + TILE] = d[:, oy:oy + min(TILE, yn - y0), ox:ox + min(TILE, xn - x0)]
        return out * allowed


def load_protector(run: str | Path) -> Protector:
    run = Path(run)
    folder = next((c for c in (run / "model", run) if (c / "protector.json").exists()), None)
    if folder is None:
        raise MedfakeError("not a medfake protector (no model/protector.json; train one with "
                           "`medfake train protector`)", run)
    try:
        meta = json.loads((folder / "protector.json").read_text())
        config = ProtectorConfig(**meta["config"])
        net = ResidualProtector3D(config.channels, config.blocks)
        net.load_state_dict(torch.load(folder / "protector.pt", map_location="cpu", weights_only=True))
    except Exception as exc:  # a damaged folder: json, keys, or weights
        raise MedfakeError(f"cannot load the protector ({exc.__class__.__name__})", folder) from None
    digest = hashlib.sha256((folder / "protector.pt").read_bytes()).hexdigest()[:12]
    return Protector(net.eval(), meta, f"{run.name}@{meta.get('step', '?')}:{digest}")
