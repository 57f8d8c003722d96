"""Montage of the anomaly-synthesis tasks on a real brain MRI slice, to check them by eye.

Rows are the tasks of "Many tasks make light work" (MICCAI 2023) that MediCLIP (MICCAI 2024,
arXiv 2405.11315) trains with; columns are seeds. Each cell shows the image after synthesis with the
outline of its mask in colour; the first column is the untouched slice. The slice is an axial cut
near the middle of the MNI152 2009 T1 template that ships inside nilearn (no download), scaled to
[0, 1] and resized to 224 x 224; CutPaste takes its content from neighbouring slices (the support set).

    python scripts/show_synthesis.py --output synthesis.png [--seeds 6] [--foreground-threshold 0.05]
"""

from __future__ import annotations

import argparse
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

from mediclip_monai.transforms import SYNTHESIS_TASKS, make_synthesis_task

# one outline colour per task, in the order of the registered tasks
OUTLINES = ["#ff4040", "#ffb000", "#40ff40", "#00e0ff", "#ff60ff", "#ffffff"]
TASK_COLOURS = dict(zip(SYNTHESIS_TASKS, itertools.cycle(OUTLINES)))


def mni_axial_slices(heights_mm: list[float], size: int = 224) -> list[np.ndarray]:
    """Axial slices of the MNI152 T1 template at the given heights (mm, MNI z), each ``(1, size, size)``
    float32 in [0, 1], anterior at the top, padded to a square before resizing (no distortion)."""
    from nilearn.datasets import load_mni152_template  # bundled in nilearn's wheel: no download

    template = load_mni152_template(resolution=1)
    volume = np.asarray(template.get_fdata(dtype=np.float32))
    inverse = np.linalg.inv(template.affine)
    slices = []
    for z_mm in heights_mm:
        k = round(float((inverse @ np.array([0.0, 0.0, z_mm, 1.0]))[2]))
        plane = np.rot90(volume[:, :, k])
        side = max(plane.shape)
        pad = [((side - n) // 2, side - n - (side - n) // 2) for n in plane.shape]
        plane = ndimage.zoom(np.pad(plane, pad), size / side, order=1)
        plane = np.clip(plane / max(float(volume.max()), 1e-6), 0.0, 1.0)
        slices.append(plane[None].astype(np.float32))
    return slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="synthesis.png", help="PNG file to write")
    parser.add_argument("--seeds", type=int, default=6, help="number of columns (one seed each)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument(
        "--foreground-threshold",
        type=float,
        default=None,
        help="place anomalies only on the brain (e.g. 0.05)",
    )
    args = parser.parse_args()

    image, *support = mni_axial_slices([10.0, -6.0, 2.0, 18.0, 26.0], args.size)
    rows, cols = len(SYNTHESIS_TASKS), args.seeds + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows), squeeze=False)
    for r, name in enumerate(SYNTHESIS_TASKS):
        task = make_synthesis_task(
            name, support_images=support, foreground_threshold=args.foreground_threshold
        )
        for c in range(cols):
            ax = axes[r, c]
            if c == 0:
                shown, mask = image, np.zeros_like(image)
            else:
                if hasattr(task, "set_random_state"):
                    task.set_random_state(c - 1)
                shown, mask = task(image)
            ax.imshow(shown[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if mask.any():
                ax.contour(mask[0], levels=[0.5], colors=TASK_COLOURS[name], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"seed {c - 1}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("Anomaly synthesis on an MNI152 axial slice (mask outlined)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
