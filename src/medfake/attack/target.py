"""The segmentation model under audit: a `medfake train segmenter` run, or any user model described by a small
YAML file:

    classes: liver=5,spleen=1        # output channel k+1 = organ k (label ids in the label maps); 0 = background
    normalisation: {window: [-200, 300]}   # HU clipped to the window and mapped to [0, 1]
    pixel_mm: 3.0                    # in-plane pixel size the model expects (slices are resampled to it)
    in_channels: 1
    torchscript: model.ts            # a TorchScript file ...
    # monai: {name: UNet, args: {spatial_dims: 2, in_channels: 1, out_channels: 3, channels: [16, 32], strides: [2]}}
    # weights: model.pt              # ... or a MONAI network and its state dict
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from medfake.attack.data import Normalisation, Organ, parse_classes
from medfake.errors import MedfakeError

TARGET_YAML = "target.yaml"


@dataclass
class SegTarget:
    net: torch.nn.Module
    organs: list[Organ]
    normalisation: Normalisation
    pixel_mm: float
    source: str

    @property
    def classes(self) -> int:
        return len(self.organs) + 1

    def logits(self, hu: torch.Tensor) -> torch.Tensor:
        """(B,1,H,W) HU → (B,classes,H,W) logits."""
        return self.net(self.normalisation.apply(hu))

    def to(self, device) -> "SegTarget":
        self.net = self.net.to(device)
        return self


def write_target_yaml(folder: Path, organs: list[Organ], normalisation: Normalisation, pixel_mm: float,
                      monai: dict, weights: str) -> Path:
    spec = {"classes": ",".join(f"{o.name}={'+'.join(map(str, o.ids))}" for o in organs),
            "normalisation": normalisation.as_dict(), "pixel_mm": pixel_mm, "in_channels": 1,
            "monai": monai, "weights": weights}
    path = folder / TARGET_YAML
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load_target(path: str | Path, device: str | torch.device = "cpu") -> SegTarget:
    """A run folder (with target.yaml) or a target YAML → the frozen model, checked on a dummy slice."""
    path = Path(path)
    spec_path = path / TARGET_YAML if path.is_dir() else path
    if not spec_path.exists():
        raise MedfakeError(f"no {TARGET_YAML} (train one with `medfake train segmenter`, or describe the model "
                           "in a YAML file)", path)
    try:
        spec = yaml.safe_load(spec_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedfakeError(f"not valid YAML ({exc.__class__.__name__})", spec_path) from None
    if not isinstance(spec, dict) or "classes" not in spec:
        raise MedfakeError("target YAML needs 'classes' (e.g. liver=5,spleen=1)", spec_path)
    organs = parse_classes(spec["classes"])
    norm = Normalisation.from_dict(spec.get("normalisation"))
    in_channels = int(spec.get("in_channels", 1))
    if in_channels != 1:
        raise MedfakeError(f"the audit feeds 1-channel CT slices; the YAML declares {in_channels} input channels",
                           spec_path)
    net = build_net(spec, spec_path.parent, spec_path)
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    target = SegTarget(net, organs, norm, float(spec.get("pixel_mm", 3.0)), str(path)).to(device)
    check_channels(target, spec_path)
    return target


def build_net(spec: dict, base: Path, spec_path: Path) -> torch.nn.Module:
    if "torchscript" in spec:
        file = base / spec["torchscript"]
        try:
            return torch.jit.load(str(file), map_location="cpu")
        except Exception as exc:  # torch raises many types for a bad file
            raise MedfakeError(f"not a loadable TorchScript model ({exc.__class__.__name__})", file) from None
    if "monai" not in spec:
        raise MedfakeError("target YAML needs 'torchscript: FILE' or 'monai: {name, args}' with 'weights'", spec_path)
    import monai.networks.nets as nets

    name, args = spec["monai"].get("name", ""), spec["monai"].get("args", {})
    if not hasattr(nets, name):
        raise MedfakeError(f"unknown MONAI network '{name}'", spec_path)
    try:
        net = getattr(nets, name)(**args)
    except Exception as exc:
        raise MedfakeError(f"cannot build MONAI {name}: {' '.join(str(exc).split())[:200]}", spec_path) from None
    if spec.get("weights"):
        from medfake.training import load_checkpoint

        state = load_checkpoint(base / spec["weights"], trusted=False)
        try:
            net.load_state_dict(state.get("state_dict", state))
        except RuntimeError as exc:
            raise MedfakeError(f"weights do not fit the network: {' '.join(str(exc).split())[:200]}",
                               base / spec["weights"]) from None
    return net


def check_channels(target: SegTarget, spec_path: Path) -> None:
    """Run one blank 64² slice: the model must take 1 channel and return background + one logit per organ."""
    device = next(iter(target.net.parameters())).device if list(target.net.parameters()) else "cpu"
    try:
        with torch.no_grad():
            out = target.logits(torch.full((1, 1, 64, 64), -1000.0, device=device))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[-1]  # TorchScript: the last line
        raise MedfakeError(f"model rejects a 1-channel 64×64 slice: {' '.join(reason.split())[:160]}",
                           spec_path) from None
    if out.ndim != 4 or out.shape[1] != target.classes or out.shape[-2:] != (64, 64):
        raise MedfakeError(f"model outputs shape {tuple(out.shape)} but the YAML names {len(target.organs)} "
                           f"organ(s) + background: expected (1, {target.classes}, 64, 64)", spec_path)
