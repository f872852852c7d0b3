"""`medfake trainset inject|remove`, `medfake train inject|remove`, `medfake tamper`, `medfake cad`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from medfake.errors import MedfakeError
from medfake.tamper.config import (ACTIONS, COORD_SYSTEMS, DEFAULT_VIEWS, METHODS, PRESETS, AugmentConfig,
                                   GanTrainConfig, TamperRequest, TrainsetConfig)

out = Console()
_registered: set[int] = set()

SCANS_HELP = "A folder of scans (files or DICOM subfolders), a .txt list of paths, or a scan; repeatable."
COORDS_HELP = "Location table: CT-GAN (filename,x,y,z[,type]), LUNA16 annotations.csv or a medfake manifest."


# --- training sets -----------------------------------------------------------------------------------
def _trainset(action: str, scans: list[Path], coords: Path | None, auto_healthy: int, out_dir: Path, system: str,
              cube: int, iso_spacing: float, rotation_step: float, shift: int, no_flips: bool, seed: int,
              overwrite: bool) -> None:
    # scipy, torch: imported when the command runs, not at CLI start-up
    from medfake.tamper.trainset import build_trainset
    from medfake.training import progress_bar

    config = TrainsetConfig(action, cube=cube, iso_spacing=iso_spacing, coord_system=system,
                            augment=AugmentConfig(flips=not no_flips, shift=shift, rotation_step_deg=rotation_step))
    with progress_bar() as bar:
        folder = build_trainset(action, scans, out_dir, coords, auto_healthy, seed, config, overwrite, bar)
    index = json.loads((folder / "index.json").read_text())
    locations, views = len(index["locations"]), len(index["views"])
    out.print(f"{folder}: {locations} locations × {views} views = {locations * views} cubes of {cube}³ at "
              f"{iso_spacing:g} mm ({action}); sample sheet {folder / 'samples.png'}")


def _trainset_command(action: str):
    def command(scans: list[Path] = typer.Option(..., "--scans", help=SCANS_HELP),
                coords: Path = typer.Option(None, "--coords", help=COORDS_HELP),
                auto_healthy: int = typer.Option(TrainsetConfig.auto_healthy, "--auto-healthy",
                                                 help="Healthy locations sampled per scan in the lungs (remove)."),
                out_dir: Path = typer.Option(..., "-o", "--output", help="New training-set folder."),
                system: str = typer.Option(TrainsetConfig.coord_system, "--system",
                                           help="Table coordinates: world (mm) | vox."),
                cube: int = typer.Option(TrainsetConfig.cube, "--cube", help="Cube size (points per axis) after resampling."),
                iso_spacing: float = typer.Option(TrainsetConfig.iso_spacing, "--spacing",
                                                  help="Isotropic spacing of the cubes (mm)."),
                rotation_step: float = typer.Option(AugmentConfig.rotation_step_deg, "--rotation-step",
                                                    help="In-plane rotation step (deg), 0 = none."),
                shift: int = typer.Option(AugmentConfig.shift, "--shift", help="Diagonal in-plane shifts (grid points), 0 = none."),
                no_flips: bool = typer.Option(False, "--no-flips", help="Leave out the y/x flips."),
                seed: int = typer.Option(0, "--seed"),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty destination.")):
        _trainset(action, scans, coords, auto_healthy, out_dir, system, cube, iso_spacing, rotation_step, shift,
                  no_flips, seed, overwrite)

    command.__doc__ = (f"Training cubes for the {'injector (nodule locations)' if action == 'inject' else 'remover (healthy locations)'}: "
                       "one stored region per location, from which isotropic cubes are drawn on the fly through "
                       "67 augmented views (rotations, flips, shifts); equalizer, sample sheet.")
    return command


# --- training ------------------------------------------------------------------------------------------
def _train_command(action: str):
    def command(data: Path = typer.Option(..., "--data", help="Training set folder (medfake trainset)."),
                preset: str = typer.Option(GanTrainConfig.preset, "--preset", help=" | ".join(PRESETS)),
                run: Path = typer.Option(..., "-o", "--output", help="Run folder (checkpoints, snapshots, model/)."),
                resume: bool = typer.Option(False, "--resume", help="Continue the run's checkpoint exactly."),
                steps: int = typer.Option(None, "--steps", help="Total training steps (default: preset)."),
                seed: int = typer.Option(None, "--seed", help=f"Seed (default {GanTrainConfig.seed})."),
                batch_size: int = typer.Option(None, "--batch-size"),
                g_lr: float = typer.Option(None, "--g-lr", help="Generator learning rate."),
                d_lr: float = typer.Option(None, "--d-lr", help="Discriminator learning rate."),
                hole: int = typer.Option(None, "--hole", help="Hole size (16 or 20 in the reference)."),
                l1_region: str = typer.Option(None, "--l1", help="L1 over the whole cube or the hole: cube | hole."),
                snapshot_every: int = typer.Option(None, "--snapshot-every",
                                                   help="Interval (steps) of PNG snapshot, validation and model/."),
                checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Checkpoint interval (steps)."),
                mixed_precision: str = typer.Option(None, "--mixed-precision", help="auto | no | fp16 | bf16"),
                max_minutes: float = typer.Option(None, "--max-minutes", help="Stop (and save) after this wall time."),
                data_workers: int = typer.Option(None, "--data-workers",
                                                 help="Processes drawing augmented cubes ahead of training "
                                                      "(default: preset; several on a GPU machine).")):
        from medfake.tamper.train import train  # torch: imported when a command runs, not at CLI start-up

        config = GanTrainConfig.resolve(action, preset, steps=steps, seed=seed, batch_size=batch_size, g_lr=g_lr,
                                     d_lr=d_lr, hole=hole, l1_region=l1_region, snapshot_every=snapshot_every,
                                     checkpoint_every=checkpoint_every, mixed_precision=mixed_precision,
                                     data_workers=data_workers)
        folder = train(data, run, config, resume=resume, steps=steps, max_minutes=max_minutes,
                       data_workers=data_workers)
        out.print(f"{folder}: model in {folder / 'model'}, snapshots in {folder / 'snapshots'}")

    command.__doc__ = (f"Train the {action} generator (3D pix2pix in-painting, LSGAN + 100·L1) on a training set; "
                       "resumable checkpoints, PNG snapshots, model folder with equalizer and config.")
    return command


# --- tampering -----------------------------------------------------------------------------------------
def tamper(target: Path = typer.Option(..., "-t", "--target", help="Scan: DICOM folder/file, .mhd, .nrrd, .nii[.gz], .npz."),
           destination: Path = typer.Option(..., "-d", "--destination", help="Output folder (scan + manifest.csv)."),
           action: str = typer.Option(..., "-a", "--action", help=" | ".join(ACTIONS)),
           coord: list[str] = typer.Option(None, "-c", "--coord",
                                           help="z,y,x voxel (or x,y,z mm with -s world); repeat -c or list after it."),
           more: list[str] = typer.Argument(None, hidden=True),
           system: str = typer.Option(TamperRequest.system, "-s", "--system", help=" | ".join(COORD_SYSTEMS)),
           coords: Path = typer.Option(None, "--coords", help=COORDS_HELP),
           auto: int = typer.Option(TamperRequest.auto, "--auto", help="Choose N locations automatically (recorded chosen_by=auto)."),
           label: Path = typer.Option(None, "--label", help="Nodule label volume on the scan's grid: removal targets for --auto."),
           model: Path = typer.Option(None, "--model", help="Run folder of `medfake train` (methods ctgan, cyclegan)."),
           fmt: str = typer.Option(TamperRequest.fmt, "-f", "--format", help="same | dicom | mhd | nrrd | nifti | npz"),
           seed: int = typer.Option(TamperRequest.seed, "--seed", help="Seed for noise and automatic locations."),
           method: str = typer.Option(TamperRequest.method, "--method", help=" | ".join(METHODS)),
           donor: Path = typer.Option(None, "--donor", help="copy-move: scan to copy the nodule from (default: target)."),
           donor_coord: str = typer.Option(None, "--donor-coord", help="copy-move: donor nodule z,y,x voxel."),
           blend: str = typer.Option(None, "--blend", help="ctgan: INNER,OUTER blend radii in mm (default hole/2-1, hole/2+3)."),
           views: int = typer.Option(None, "--views", help="ctgan: fill the hole through 1-4 flips of the cube and "
                                     "keep the strongest (default " +
                                     ", ".join(f"{a} {n}" for a, n in DEFAULT_VIEWS.items()) + ")."),
           series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several.")):
    """Inject or remove lung nodules; writes a derived scan and appends ground truth to DEST/manifest.csv."""
    from medfake.tamper.run import tamper_file  # torch: imported when the command runs, not at CLI start-up

    locations = [c for text in list(coord or []) + list(more or []) for c in text.split()]
    request = TamperRequest(target=target, outdir=destination, action=action, coords=locations, system=system,
                            table=coords, auto=auto, label=label, method=method, model_dir=model, fmt=fmt, seed=seed,
                            donor=donor, donor_coord=donor_coord, series=series,
                            blend_mm=_pair(blend, "--blend") if blend else None, views=views)
    result = tamper_file(request)
    for row in result.rows:
        out.print(f"{row.action} ({row.method}, {row.chosen_by}) at z,y,x {row.voxel_z},{row.voxel_y},{row.voxel_x}"
                  f" = x,y,z {row.world_x:.1f},{row.world_y:.1f},{row.world_z:.1f} mm")
    out.print(f"wrote {result.output}; manifest {Path(destination) / 'manifest.csv'}")


def _pair(text: str, option: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise MedfakeError(f"{option} must be two comma-separated numbers, not '{text}'") from None
    return a, b


def cad(scan_path: Path = typer.Argument(..., help="CT scan."),
        coord: list[str] = typer.Option(None, "-c", "--coord", help="Only report on these locations (z,y,x, or x,y,z mm with -s world)."),
        system: str = typer.Option("vox", "-s", "--system", help="vox | world"),
        radius: float = typer.Option(5.0, "--radius", help="With -c: a detection within this distance (mm) counts."),
        top: int = typer.Option(20, "--top", help="At most this many candidates."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        series: str = typer.Option(None, "--series")):
    """Classical nodule candidate detector (multi-scale LoG + Hessian inside the lung mask, no learned weights)."""
    # scipy, skimage, torch: imported when the command runs, not at CLI start-up
    from medfake.cad import detect_nodules, nodule_near
    from medfake.io import load_scan
    from medfake.tamper.run import parse_coordinate, to_voxel

    scan = load_scan(scan_path, series=series)
    found = detect_nodules(scan, max_count=top)
    if coord:
        checks = []
        for text in coord:
            zyx = to_voxel(scan, parse_coordinate(text, system), system)
            hit = nodule_near(found, scan, zyx, radius)
            checks.append({"query_zyx": list(zyx), "found": hit is not None, "nodule": hit.to_dict() if hit else None})
        result = {"scan": str(scan_path), "radius_mm": radius, "locations": checks}
    else:
        result = {"scan": str(scan_path), "nodules": [n.to_dict() for n in found]}
    if as_json:
        print(json.dumps(result, indent=1))
        return
    if coord:
        for c in result["locations"]:
            n = c["nodule"]
            state = f"nodule {n['diameter_mm']:.1f} mm, score {n['score']:.0f}" if n else "no nodule"
            out.print(f"z,y,x {c['query_zyx']}: {state}")
        return
    out.print(f"{len(found)} candidate(s), strongest first")
    for n in result["nodules"]:
        out.print(f"z,y,x {n['center_zyx']}  x,y,z {n['center_xyz']} mm  {n['diameter_mm']:.1f} mm  score {n['score']:.0f}")


def register(app, data_app, train_app) -> None:
    if id(app) in _registered:  # main() may run several times in one process (tests)
        return
    _registered.add(id(app))
    trainset_app = typer.Typer(no_args_is_help=True, help="Build training sets of isotropic cubes (inject, remove).")
    for action in ACTIONS:
        trainset_app.command(action)(_trainset_command(action))
        train_app.command(action)(_train_command(action))
    app.add_typer(trainset_app, name="trainset")
    app.command("tamper")(tamper)
    app.command("cad")(cad)
