"""The MITS-GAN baseline (reference recipe, protection_and_attacks.md §A) against the same tiny white-box
injector and sites as `protect_quality.py`, to show what the budget and the gradient path buy.

Recipe kept: full-slice generator (noise net + 3 residual blocks, tanh, the protected slice itself, no
budget, no fidelity term), DCGAN discriminator with ndf 1, G loss = BCE(D(x_p), 1) − 0.1·MSE(x_p, target)
with target = the tamperer's output on x_p, *detached* (computed by the numpy pipeline), Adam 2e-4
(0.5, 0.999), 4 consecutive slices per step, values min-max scaled to [−1, 1] per volume.
Scale changes (2 shared CPU cores): training and protection on 128×128 in-plane crops around the lung
sites (the generator is fully convolutional; the discriminator's last kernel follows the crop size),
STEPS steps through `medfake.training.fit`; the protected scan differs from lung1 only in those crops, so
"whole image" figures are over the crops.

    PYTHONPATH=src python benchmarks/protect_mitsgan.py [--steps 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.lungmask import lung_mask
from medfake.nn.mitsgan import MitsGanDiscriminator, MitsGanGenerator
from medfake.protect.evaluate import disruption, similarity
from medfake.protect.surrogate import load_tamper_model, tamper_scan
from medfake.runinfo import write_run_record
from medfake.tamper.sites import pick_sites
from medfake.training import LoopConfig, fit

RESULTS = Path(__file__).parent / "results"
NODULE_ZYX = (33, 359, 218)
CROP = 128


class MitsGanBaseline:
    name = "mitsgan"
    checkpoint_name = "checkpoints/latest.pt"

    def __init__(self, scan, model, lung):
        self.scan, self.model, self.lung = scan, model, lung
        v = np.asarray(scan.voxels, dtype=np.float32)
        self.lo, self.hi = float(v.min()), float(v.max())
        self.points = np.argwhere(lung[:, ::8, ::8]) * np.array([1, 8, 8])

    def to_net(self, hu):
        return (np.asarray(hu, np.float32) - self.lo) / (self.hi - self.lo) * 2 - 1

    def to_hu(self, net):
        return (np.asarray(net, np.float32) + 1) / 2 * (self.hi - self.lo) + self.lo

    def setup(self, accelerator):
        self.accelerator = accelerator
        self.G, self.D = MitsGanGenerator(), MitsGanDiscriminator(CROP)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(self.G, self.D, self.opt_g, self.opt_d)

    def window(self, zyx):
        z, y, x = zyx
        z0 = int(np.clip(z - 1, 0, self.scan.shape[0] - 4))
        y0 = int(np.clip(y - CROP // 2, 0, self.scan.shape[1] - CROP))
        x0 = int(np.clip(x - CROP // 2, 0, self.scan.shape[2] - CROP))
        return slice(z0, z0 + 4), slice(y0, y0 + CROP), slice(x0, x0 + CROP)

    def train_step(self, step):
        zyx = tuple(int(v) for v in self.points[np.random.randint(len(self.points))])
        box = self.window(zyx)
        x = torch.from_numpy(self.to_net(self.scan.voxels[box]))[:, None]
        xp = self.G(x)
        real, fake = self.D(x), self.D(xp.detach())
        d_loss = F.binary_cross_entropy(real, torch.ones_like(real)) + F.binary_cross_entropy(fake, torch.zeros_like(fake))
        self.opt_d.zero_grad()
        self.accelerator.backward(d_loss)
        self.opt_d.step()
        # the attacker on the protected slices, detached (the reference's black-box call)
        voxels = np.asarray(self.scan.voxels).copy()
        voxels[box] = np.rint(self.to_hu(xp.detach()[:, 0].numpy())).astype(voxels.dtype)
        tampered, _ = tamper_scan(self.scan.with_voxels(voxels), [zyx], "inject", self.model,
                                  rng=np.random.default_rng(step))
        target = torch.from_numpy(self.to_net(tampered.voxels[box]))[:, None]
        judged = self.D(xp)
        g_loss = F.binary_cross_entropy(judged, torch.ones_like(judged)) - 0.1 * F.mse_loss(xp, target)
        self.opt_g.zero_grad()
        self.accelerator.backward(g_loss)
        self.opt_g.step()
        return {"d": float(d_loss.detach()), "g": float(g_loss.detach())}

    def state(self):
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict()}

    def load_state(self, state):
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def snapshot(self, folder, step):
        pass

    @torch.no_grad()
    def protect(self, sites):
        self.G.eval()
        voxels = np.asarray(self.scan.voxels).copy()
        for zyx in sites:
            z, y, x = (int(v) for v in zyx)
            zs = slice(max(z - 4, 0), min(z + 5, self.scan.shape[0]))
            _, ys, xs = self.window(zyx)
            x_net = torch.from_numpy(self.to_net(self.scan.voxels[zs, ys, xs]))[:, None]
            out = self.to_hu(self.G(x_net)[:, 0].numpy())
            info = np.iinfo(voxels.dtype)
            voxels[zs, ys, xs] = np.clip(np.rint(out), info.min, info.max).astype(voxels.dtype)
        return self.scan.with_voxels(voxels)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--injector-steps", type=int, default=200)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medfake_protect_bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from protect_quality import tiny_injector  # the same white-box injector (trained once, reused)

    model = load_tamper_model(tiny_injector(args.work / "white", args.injector_steps, 0))
    scan = load_scan(sample_path("lung1"))
    lung = lung_mask(scan)
    sites = pick_sites(scan, args.sites, np.random.default_rng(0), lung, avoid_zyx=[NODULE_ZYX])
    baseline = MitsGanBaseline(scan, model, lung)
    run = args.work / f"mitsgan_{args.steps}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    fit(baseline, run, LoopConfig(steps=args.steps, seed=0, checkpoint_every=args.steps, snapshot_every=args.steps,
                                  show_progress=False, mixed_precision="no"), {"steps": args.steps})
    protected = baseline.protect(sites)
    attack = lambda s, zyx: tamper_scan(s, [zyx], "inject", model, rng=np.random.default_rng(1))[0]  # noqa: E731
    result = disruption(scan, protected, attack, sites, "inject", lung)
    crops = [tuple([slice(max(int(z) - 4, 0), int(z) + 5)] + list(baseline.window((z, y, x))[1:]))
             for z, y, x in sites]
    imperceptibility = [similarity(scan.voxels[c], protected.voxels[c]) for c in crops]
    out = {"scale": {"steps": args.steps, "crop": CROP, "sites": [list(map(int, s)) for s in sites],
                     "injector": f"16³, {args.injector_steps} steps (protect_quality.py's white-box)"},
           "imperceptibility_per_site_crop": imperceptibility,
           "imperceptibility_mean": {k: float(np.mean([i[k] for i in imperceptibility])) for k in imperceptibility[0]},
           "white_box": result}
    print(json.dumps({"imperceptibility_mean": out["imperceptibility_mean"],
                      "success": [result["success_unprotected"], result["success_protected"]],
                      "core": [result["core_change_unprotected_hu"], result["core_change_protected_hu"]],
                      "roi_psnr_lung_db": result["roi_psnr_lung_db"]}, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "protect_mitsgan.json").write_text(json.dumps(out, indent=2, default=float))
    write_run_record(RESULTS, vars(args), 0, name="protect_mitsgan.run.json")


if __name__ == "__main__":
    main()
