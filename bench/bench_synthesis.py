"""Speed and fingerprint of the anomaly-synthesis tasks, on one CPU core, at 224 x 224.

The tasks are those of "Many tasks make light work" (MICCAI 2023) as MediCLIP (MICCAI 2024,
arXiv 2405.11315) uses them. Each task runs ``--draws`` seeded times over 16 axial slices of the
MNI152 T1 template bundled with nilearn (no download), as torch tensors in [0, 1]; the support set
for CutPaste is the same 16 slices. Printed per task: median and 95th-percentile milliseconds per
sample, then the fingerprint to compare with the reference (docs/METHOD.md): mask area as a fraction
of the image (mean, p5/p50/p95), share of masks in 1 / 2 / 3+ pieces, share of samples with two
anomalies placed, mean absolute change inside the mask, share of labelled pixels that did not
change, share of labelled pixels on empty background (and the same with ``foreground_threshold``).

    python bench/bench_synthesis.py [--draws 200] [--foreground-threshold 0.05]
"""

from __future__ import annotations

import os

# One core, as a single DataLoader worker would have: set before numpy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from mediclip_monai.transforms import SYNTHESIS_TASKS, RandAnomalySynthesis, make_synthesis_task

BACKGROUND = 0.02  # template intensity below which a pixel is empty background


def mni_slices(count: int = 16, size: int = 224) -> list[np.ndarray]:
    """``count`` axial MNI152 T1 slices from z = -20 to 60 mm, each ``(1, size, size)`` in [0, 1]."""
    from nilearn.datasets import load_mni152_template  # bundled in nilearn's wheel: no download

    template = load_mni152_template(resolution=1)
    volume = np.asarray(template.get_fdata(dtype=np.float32))
    inverse = np.linalg.inv(template.affine)
    slices = []
    for z_mm in np.linspace(-20.0, 60.0, count):
        k = round(float((inverse @ np.array([0.0, 0.0, z_mm, 1.0]))[2]))
        plane = np.rot90(volume[:, :, k])
        side = max(plane.shape)
        pad = [((side - n) // 2, side - n - (side - n) // 2) for n in plane.shape]
        plane = ndimage.zoom(np.pad(plane, pad), size / side, order=1)
        slices.append(np.clip(plane / volume.max(), 0.0, 1.0)[None].astype(np.float32))
    return slices


def run(transform, images: list[torch.Tensor], draws: int) -> dict:
    """Time ``draws`` calls and gather the fingerprint of their masks."""
    times, areas, pieces, two, change, unchanged, background = [], [], [], [], [], [], []
    for i in range(draws):
        image = images[i % len(images)]
        start = time.perf_counter()
        out, mask = transform(image)
        times.append(time.perf_counter() - start)
        labelled = mask[0].numpy() > 0.5
        areas.append(labelled.mean())
        placements = getattr(transform, "placements", None)
        if placements is not None:
            two.append(len(placements) == 2)
        if labelled.any():
            diff = np.abs(out[0].numpy() - image[0].numpy())[labelled]
            pieces.append(ndimage.label(labelled)[1])
            change.append(diff.mean())
            unchanged.append(np.mean(diff == 0))
            background.append(np.mean(image[0].numpy()[labelled] < BACKGROUND))
    pieces = np.array(pieces)
    return {
        "median_ms": 1000 * np.median(times),
        "p95_ms": 1000 * np.percentile(times, 95),
        "area": np.array(areas),
        "pieces": [np.mean(pieces == 1), np.mean(pieces == 2), np.mean(pieces >= 3)] if pieces.size else None,
        "two": np.mean(two) if two else float("nan"),
        "change": np.mean(change) if change else float("nan"),
        "unchanged": np.mean(unchanged) if unchanged else float("nan"),
        "background": np.mean(background) if background else float("nan"),
        "empty": np.mean(np.array(areas) == 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=200, help="samples per task")
    parser.add_argument("--foreground-threshold", type=float, default=0.05, help="for the 'fg' column")
    args = parser.parse_args()
    torch.set_num_threads(1)

    slices = mni_slices()
    images = [torch.from_numpy(s) for s in slices]
    header = (
        f"{'task':22s} {'median ms':>9s} {'p95 ms':>7s} | {'area mean (p5/p50/p95)':>28s} | "
        f"{'1/2/3+ pieces':>14s} | {'2 placed':>8s} | {'|d| in':>6s} | {'unchanged':>9s} | "
        f"{'on bg':>5s} | {'on bg, fg':>9s}"
    )
    print(f"{args.draws} draws per task, 224 x 224, 1 thread, torch float32 input\n{header}\n{'-' * len(header)}")
    rows = [(name, lambda fg, name=name: make_synthesis_task(name, slices, fg)) for name in SYNTHESIS_TASKS]
    rows.append(("default mixture", lambda fg: RandAnomalySynthesis(None, slices, fg)))
    for name, build in rows:
        results = []
        for threshold in (None, args.foreground_threshold):
            transform = build(threshold)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(0)
            transform(images[0])  # warm-up: first-call imports and allocations
            results.append(run(transform, images, args.draws))
        r, fg = results
        area = r["area"]
        pieces = "/".join(f"{p:.2f}" for p in r["pieces"]) if r["pieces"] else "-"
        print(
            f"{name:22s} {r['median_ms']:9.1f} {r['p95_ms']:7.1f} | "
            f"{area.mean():.3f} ({np.percentile(area, 5):.3f}/{np.median(area):.3f}/"
            f"{np.percentile(area, 95):.3f})"
            f"{'':5s} | {pieces:>14s} | {r['two']:8.2f} | {r['change']:6.3f} | {r['unchanged']:9.2f} | "
            f"{r['background']:5.2f} | {fg['background']:9.2f}"
            + (f"   (empty masks {r['empty']:.2f})" if name == "default mixture" else "")
        )


if __name__ == "__main__":
    main()
