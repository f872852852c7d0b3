"""Generator mode (Chen et al. 2019): a VAE-like field generator trained against a fixed target and a WGAN-GP
critic on the one training loop, then applied to new slices in one forward pass (+ the per-organ calibration
to a requested drop, calibrate.py).

The generator sees x and S(x)'s class probabilities; both fields are multiplied by the organ envelope
(problem.organ_envelope, as in optimize mode) in training and in use. Generator loss: L_att (α or drop, as in
optimize.py) + λ₁‖∇u‖² + λ₂‖∇b‖² + folding penalty + λ_P·P + β_KL·KL − w_adv·C(x̃) + w_T·imitation, the last
the relative squared distance to optimize mode's fields on the training slices (fitted first: the generator
learns the per-scan optimum's patterns, which the attack loss alone finds slowly); critic loss (n_critic steps
per generator step): C(x̃) − C(x) + λ_GP·(‖∇C(x̂)‖ − 1)².
RMSProp (decay 0.9), the same learning rate for both. RUN folder: generator.pt + generator.json (+ the loop's
files).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfake.attack.calibrate import calibrate_to_drop, organ_weights
from medfake.attack.config import AttackConfig, GeneratorConfig
from medfake.attack.fields import transform, without_folding
from medfake.attack.optimize import attack_loss, perceptibility_term, regulariser
from medfake.attack.problem import Outcome, Problem, evaluate, organ_envelope
from medfake.errors import MedfakeError
from medfake.nn.seg_attack import Critic, FieldGenerator

GENERATOR, GENERATOR_JSON = "generator.pt", "generator.json"


@dataclass
class GeneratorModel:
    config: GeneratorConfig
    attack: AttackConfig
    problem: Problem
    name: str = "seg-attack generator"
    checkpoint_name: str = "checkpoints/generator.pt"
    arch: dict = field(default_factory=dict)
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None  # optimize mode's fields on the training slices

    def setup(self, accelerator) -> None:
        self.accelerator = accelerator
        self.arch = self.config.network(self.problem.pixel_mm, self.problem.std, self.attack,
                                        self.problem.classes)
        self.gen, self.critic = FieldGenerator(**self.arch), Critic(self.config.critic_width)
        rms = lambda net: torch.optim.RMSprop(net.parameters(), lr=self.config.lr, alpha=0.9)
        self.opt_g, self.opt_c = rms(self.gen), rms(self.critic)
        self.gen, self.critic, self.opt_g, self.opt_c = accelerator.prepare(self.gen, self.critic, self.opt_g,
                                                                            self.opt_c)
        self.rng = np.random.default_rng(self.config.seed)
        self.envelope = organ_envelope(self.problem, self.attack.cell).to(accelerator.device)

    def batch(self) -> tuple[Problem, torch.Tensor, torch.Tensor]:
        n = len(self.problem.x)
        index = torch.from_numpy(self.rng.choice(n, size=min(self.config.batch_size, n), replace=False))
        return self.problem.subset(index), self.envelope[index], index

    def critic_step(self, part: Problem, envelope: torch.Tensor) -> float:
        x = part.x
        with torch.no_grad():
            u, b, _ = confined_fields(self.gen, x, part.clean_logits, envelope)
            fake = transform(x, u, b)
        mix = torch.rand(len(x), 1, 1, 1, device=x.device)
        blend = (mix * x + (1 - mix) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.critic(blend).sum(), blend, create_graph=True)
        penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        loss = self.critic(fake).mean() - self.critic(x).mean() + self.config.lambda_gp * penalty
        self.opt_c.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.opt_c.step()
        return float(loss.detach())

    def train_step(self, step: int) -> dict:
        part, envelope, index = self.batch()
        x = part.x
        self.gen.train()
        critic_loss = [self.critic_step(part, envelope) for _ in range(self.config.n_critic)][-1]
        u, b, kl = confined_fields(self.gen, x, part.clean_logits, envelope)
        x_adv = transform(x, u, b)
        att = attack_loss(part, part.logits(x_adv), u, self.attack)
        realism = -self.critic(x_adv).mean()
        loss = att + regulariser(u, b, self.attack) + self.config.beta_kl * kl + self.config.w_adv * realism + \
            self.attack.lambda_p * perceptibility_term(x, x_adv)
        if self.teacher is not None:
            loss = loss + self.config.w_teacher * imitation(u, b, self.teacher[0][index], self.teacher[1][index])
        self.opt_g.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.opt_g.step()
        return {"attack": float(att.detach()), "critic": critic_loss, "kl": float(kl.detach()),
                "max_u_px": float(u.detach().abs().max())}

    def state(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"gen": unwrap(self.gen).state_dict(), "critic": unwrap(self.critic).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        unwrap = self.accelerator.unwrap_model
        unwrap(self.gen).load_state_dict(state["gen"])
        unwrap(self.critic).load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.rng.bit_generator.state = state["rng"]

    def snapshot(self, folder: Path, step: int) -> None:
        from medfake.training import save_checkpoint

        save_checkpoint(folder / GENERATOR, self.accelerator.unwrap_model(self.gen).state_dict())
        (folder / GENERATOR_JSON).write_text(json.dumps({"network": self.arch, "attack": asdict(self.attack),
                                                         "std_hu": self.problem.std, "pixel_mm": self.problem.pixel_mm,
                                                         "step": step}, indent=2))


def imitation(u: torch.Tensor, b: torch.Tensor, u_teacher: torch.Tensor, b_teacher: torch.Tensor) -> torch.Tensor:
    """Relative squared distance of the fields to the teacher's (both fields together, their own units)."""
    scale = u_teacher.pow(2).sum() + b_teacher.pow(2).sum() + 1e-6
    return ((u - u_teacher).pow(2).sum() + (b - b_teacher).pow(2).sum()) / scale


def teacher_fields(problem: Problem, attack: AttackConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimize mode's fields on the training slices (u in pixels, b in z-units): what the generator imitates."""
    from medfake.attack.optimize import optimize_fields

    outcome = optimize_fields(problem, attack)
    return (torch.from_numpy(outcome.u).float().to(problem.device),
            torch.from_numpy(outcome.b_hu[:, None] / problem.std).float().to(problem.device))


def train_generator(problem: Problem, out: Path, config: GeneratorConfig, attack: AttackConfig,
                    resume: bool = False, show_progress: bool = True) -> Path:
    from medfake.training import LoopConfig, fit

    loop = LoopConfig(steps=config.steps, seed=config.seed, checkpoint_every=config.snapshot_every,
                      snapshot_every=config.snapshot_every, show_progress=show_progress)
    record = {"generator": asdict(config), "attack": asdict(attack), "target": problem.target.source,
              "slices": len(problem.x), "scan": problem.slices.source}
    teacher = teacher_fields(problem, attack) if config.w_teacher > 0 else None
    return fit(GeneratorModel(config, attack, problem, teacher=teacher), out, loop, record, resume=resume)


def load_generator(run: str | Path, device="cpu") -> tuple[FieldGenerator, dict]:
    run = Path(run)
    if not (run / GENERATOR_JSON).exists():
        raise MedfakeError(f"no {GENERATOR_JSON}: not a generator run", run)
    from medfake.training import load_checkpoint

    info = json.loads((run / GENERATOR_JSON).read_text())
    gen = FieldGenerator(**info["network"])
    gen.load_state_dict(load_checkpoint(run / GENERATOR, trusted=False))
    return gen.to(device).eval(), info


def confined_fields(gen: FieldGenerator, x: torch.Tensor, clean_logits: torch.Tensor, envelope: torch.Tensor,
                    stochastic: bool = True):
    """The generator's fields (its input: x, and S(x)'s class probabilities when it was trained with them) times
    the organ envelope (as in optimize mode: nothing moves away from the organs), kept fold-free."""
    inputs = x if gen.in_channels == 1 else torch.cat([x, clean_logits.softmax(1)], dim=1)
    u, b, kl = gen(inputs, stochastic=stochastic)
    return without_folding(u * envelope), b * envelope, kl


@torch.no_grad()
def apply_generator(problem: Problem, gen: FieldGenerator, attack: AttackConfig, stochastic: bool = False,
                    seed: int = 0, rescale_bias: float = 1.0) -> Outcome:
    """One forward pass per slice batch, the fields confined to the organ envelope; with `attack.drop`, the
    per-organ calibration to the drop (calibrate.py: target forward passes only). `rescale_bias` converts b from
    the training stack's z-units to this stack's (std_train / std_here)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    envelope = organ_envelope(problem, attack.cell)
    fields = [confined_fields(gen, problem.x[i:i + 8], problem.clean_logits[i:i + 8], envelope[i:i + 8], stochastic)
              for i in range(0, len(problem.x), 8)]
    u = torch.cat([f[0] for f in fields])
    b = torch.cat([f[1] for f in fields]) * rescale_bias
    calibration = None
    if attack.drop is not None:
        u, b, calibration = calibrate_to_drop(problem, u, b, attack.drop, organ_weights(problem, attack.margin))
    outcome = evaluate(problem, u, b, "generator", time.perf_counter() - start)
    outcome.calibration = calibration
    return outcome
