"""How close are synthetic chest CTs to the real lung1 scan? HU histograms (body, lung), tissue peaks,
noise std and noise power spectrum in homogeneous soft tissue and lung, lung volume fraction.

    .venv/bin/python benchmarks/synth_vs_lung1.py [--n 4] [--seed 0]

Prints a table and writes benchmarks/results/synth_vs_lung1.json, two PNGs (histograms and spectra; slices)
and a run record (synth_vs_lung1.run.json). "lung1-like" runs the same generator with lung1's acquisition
settings (512 px of 0.5703 mm, 5 mm slices, ~7 HU smooth-kernel noise) for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from medfake.data.samples import sample_path
from medfake.data.synth import cohort_seeds, synth_chest_ct
from medfake.io import load_scan
from medfake.lungmask import inside_air, lung_mask, lung_parenchyma
from medfake.runinfo import write_run_record
from medfake.scan import Scan

RESULTS = Path(__file__).resolve().parent / "results"
BINS = np.arange(-1100, 1301, 10)
ROI_MM = 24.0
FREQ_BINS = np.linspace(0, 0.9, 19)  # cycles/mm
LUNG1_LIKE = dict(n_xy=512, pixel_mm=0.5703125, slice_mm=5.0, noise_hu=7.0, kernel_peak_per_mm=0.08)


def body_mask(scan: Scan) -> np.ndarray:
    """Everything that is not the air around the patient (and not the table below the body)."""
    outside = (scan.voxels < -400) & ~inside_air(scan.voxels < -400)
    body = ~outside
    labels, _ = ndimage.label(body)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def homogeneous_rois(scan: Scan, low: float, high: float, max_rois: int = 400) -> list[np.ndarray]:
    """In-plane ROIs (ROI_MM square) whose smoothed content stays in [low, high] HU and is flat:
    the noise there is the scanner's, not anatomy."""
    side = int(round(ROI_MM / scan.spacing[1]))
    rois = []
    smooth = ndimage.uniform_filter(scan.voxels.astype(np.float32), (1, 5, 5))
    for z in range(scan.shape[0]):
        inside = (smooth[z] > low) & (smooth[z] < high)
        for y in range(0, scan.shape[1] - side, side // 2):
            for x in range(0, scan.shape[2] - side, side // 2):
                if inside[y:y + side, x:x + side].all():
                    patch = scan.voxels[z, y:y + side, x:x + side].astype(np.float64)
                    flat = smooth[z, y + 3:y + side - 3, x + 3:x + side - 3]
                    if flat.std() < 6.0:
                        rois.append(patch)
    if len(rois) > max_rois:
        rois = [rois[i] for i in np.linspace(0, len(rois) - 1, max_rois).astype(int)]
    return rois


def noise_power(rois: list[np.ndarray], pixel_mm: float) -> tuple[np.ndarray, float]:
    """Radially averaged NPS (HU² mm², on FREQ_BINS centres) and the noise std of detrended ROIs."""
    if not rois:
        return np.full(FREQ_BINS.size - 1, np.nan), float("nan")
    side = rois[0].shape[0]
    yy, xx = np.mgrid[:side, :side]
    design = np.stack([np.ones(side * side), yy.ravel(), xx.ravel()], axis=1)
    spectra, stds = [], []
    for roi in rois:
        coef, *_ = np.linalg.lstsq(design, roi.ravel(), rcond=None)
        residual = roi - (design @ coef).reshape(side, side)
        stds.append(residual.std())
        spectra.append(np.abs(np.fft.fft2(residual)) ** 2 * pixel_mm ** 2 / (side * side))
    nps = np.mean(spectra, axis=0)
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(side, pixel_mm), np.fft.fftfreq(side, pixel_mm)))
    which = np.digitize(freq.ravel(), FREQ_BINS) - 1
    radial = np.array([nps.ravel()[which == i].mean() if np.any(which == i) else np.nan
                       for i in range(FREQ_BINS.size - 1)])
    return radial, float(np.sqrt(np.mean(np.square(stds))))


def peak(values: np.ndarray, low: float, high: float) -> float:
    hist, edges = np.histogram(values, bins=np.arange(low, high + 5, 5))
    smooth = np.convolve(hist, np.ones(5) / 5, mode="same")
    return float(edges[smooth.argmax()] + 2.5)


def measure(scan: Scan) -> dict:
    start = time.perf_counter()
    lungs = lung_mask(scan)
    mask_seconds = time.perf_counter() - start
    body = body_mask(scan) | lungs
    hu = scan.voxels
    parenchyma = lung_parenchyma(scan, lungs)
    soft_rois = homogeneous_rois(scan, -20, 100)
    fat_rois = homogeneous_rois(scan, -160, -60)
    nps_soft, std_soft = noise_power(soft_rois, scan.spacing[1])
    nps_fat, std_fat = noise_power(fat_rois, scan.spacing[1])
    residual = hu.astype(np.float32) - ndimage.median_filter(hu, size=(1, 3, 3)).astype(np.float32)
    return {
        "shape": list(scan.shape), "spacing": list(scan.spacing),
        "hist_body": np.histogram(hu[body], BINS, density=True)[0].tolist(),
        "hist_lung": np.histogram(hu[lungs], BINS, density=True)[0].tolist(),
        "sample_body": np.random.default_rng(0).choice(hu[body], 200000).astype(float),
        "sample_lung": np.random.default_rng(0).choice(hu[lungs], 200000).astype(float),
        "lung_peak_hu": peak(hu[lungs], -1000, -500), "soft_peak_hu": peak(hu[body], -30, 150),
        "fat_peak_hu": peak(hu[body], -200, -40),
        "lung_median_hu": float(np.median(hu[lungs])), "lung_p90_hu": float(np.percentile(hu[lungs], 90)),
        "noise_std_soft_hu": std_soft, "noise_std_fat_hu": std_fat,
        "rois_soft": len(soft_rois), "rois_fat": len(fat_rois),
        "residual_std_parenchyma_hu": float(residual[parenchyma].std()),
        "residual_std_soft_hu": float(residual[(hu > -20) & (hu < 100) & body].std()),
        "nps_soft": nps_soft.tolist(), "nps_fat": nps_fat.tolist(),
        "nps_soft_peak_per_mm": float(FREQ_BINS[np.nanargmax(nps_soft)] + 0.025) if len(soft_rois) else None,
        "lung_fraction_of_body": float(lungs.sum() / body.sum()),
        "lung_fraction_above_-500hu": float(np.mean(hu[lungs] > -500)),
        "lung_fraction_above_-700hu": float(np.mean(hu[lungs] > -700)),
        "lung_mask_seconds": mask_seconds,
    }


def compare(real: dict, synthetic: list[dict]) -> dict:
    def mean(key):
        values = [s[key] for s in synthetic if s[key] is not None and np.isfinite(s[key])]
        return float(np.mean(values)) if values else None

    keys = ("lung_peak_hu", "soft_peak_hu", "fat_peak_hu", "lung_median_hu", "lung_p90_hu", "noise_std_soft_hu",
            "noise_std_fat_hu", "residual_std_parenchyma_hu", "residual_std_soft_hu", "nps_soft_peak_per_mm",
            "lung_fraction_of_body", "lung_fraction_above_-500hu", "lung_fraction_above_-700hu", "lung_mask_seconds")
    table = {k: {"lung1": real[k], "synthetic_mean": mean(k)} for k in keys}
    table["wasserstein_body_hu"] = {"synthetic_mean": float(np.mean(
        [wasserstein_distance(real["sample_body"], s["sample_body"]) for s in synthetic]))}
    table["wasserstein_lung_hu"] = {"synthetic_mean": float(np.mean(
        [wasserstein_distance(real["sample_lung"], s["sample_lung"]) for s in synthetic]))}
    return table


def plot(real: dict, synthetic: list[dict], matched: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = (BINS[:-1] + BINS[1:]) / 2
    freqs = (FREQ_BINS[:-1] + FREQ_BINS[1:]) / 2
    groups = ((synthetic, "tab:orange", "synthetic (default)"), (matched, "tab:blue", "synthetic, lung1-like settings"))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    panels = ((axes[0], "hist_body", centres, "HU inside the body", "HU"),
              (axes[1], "hist_lung", centres, "HU inside the lungs", "HU"),
              (axes[2], "nps_soft", freqs, "noise power spectrum, soft-tissue ROIs", "cycles/mm"))
    for ax, key, x, title, xlabel in panels:
        for runs, colour, label in groups:
            for i, s in enumerate(runs):
                ax.plot(x, s[key], color=colour, alpha=0.6, label=label if i == 0 else None)
        ax.plot(x, real[key], color="black", lw=2, label="lung1")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("HU² mm²")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_slices(previews: list[tuple[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(previews), figsize=(4.2 * len(previews), 4.4))
    for ax, (title, image) in zip(np.atleast_1d(axes), previews):
        ax.imshow(image, cmap="gray", vmin=-1350, vmax=150)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    lung1 = load_scan(sample_path("lung1"))
    real = measure(lung1)
    previews = [("lung1 (real), slice 33", lung1.voxels[33])]
    synthetic, seconds, cpu_seconds = [], [], []
    for seed in cohort_seeds(args.seed, args.n):
        start, cpu_start = time.perf_counter(), time.process_time()
        scan, nodules = synth_chest_ct(seed)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        synthetic.append(measure(scan) | {"seed": seed})
        z = nodules[0]["voxel_zyx"][0] if nodules else scan.shape[0] // 2
        spacing = "x".join(f"{v:g}" for v in scan.spacing)
        previews.append((f"synthetic seed {seed}, slice {z} ({spacing} mm)", scan.voxels[z]))
    # the same generator configured like lung1's acquisition: 512 x 0.5703 mm pixels, 5 mm slices, smooth kernel
    matched = [measure(synth_chest_ct(seed, **LUNG1_LIKE)[0]) | {"seed": seed}
               for seed in cohort_seeds(args.seed + 1, 2)]
    table = compare(real, synthetic)
    table_matched = compare(real, matched)
    fmt = lambda v: "-" if v is None else f"{v:10.3f}"
    print(f"{'metric':32s} {'lung1':>10s} {'synthetic':>10s} {'lung1-like':>10s}")
    for key, row in table.items():
        print(f"{key:32s} {fmt(row.get('lung1')):>10s} {fmt(row['synthetic_mean']):>10s} "
              f"{fmt(table_matched[key]['synthetic_mean']):>10s}")
    print(f"generation time per scan: {np.mean(seconds):.2f} s wall, {np.mean(cpu_seconds):.2f} s CPU "
          f"(mean of {len(seconds)}; load avg "
          f"{Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'})")

    args.out.mkdir(parents=True, exist_ok=True)
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("sample_")}
    result = {"comparison": table, "comparison_lung1_like": table_matched, "lung1_like_options": LUNG1_LIKE,
              "generation_seconds": seconds, "generation_cpu_seconds": cpu_seconds, "lung1": strip(real),
              "synthetic": [strip(s) for s in synthetic],
              "synthetic_lung1_like": [strip(s) for s in matched], "freq_bins_per_mm": FREQ_BINS.tolist(),
              "hu_bins": BINS.tolist()}
    (args.out / "synth_vs_lung1.json").write_text(json.dumps(result, indent=1))
    plot(real, synthetic, matched, args.out / "synth_vs_lung1.png")
    plot_slices(previews, args.out / "synth_vs_lung1_slices.png")
    write_run_record(args.out, {"benchmark": "synth_vs_lung1", "n": args.n, "seed": args.seed,
                                "load_avg": Path("/proc/loadavg").read_text().split()[:3]},
                     seed=args.seed, name="synth_vs_lung1.run.json")
    print(f"wrote {args.out / 'synth_vs_lung1.json'} and .png")


if __name__ == "__main__":
    main()
