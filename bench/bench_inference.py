"""Inference speed on one 3D volume: end-to-end bundle inference vs the bare frozen image tower.

    python bench/bench_inference.py [--clip_model ViT-B-16] [--batch_size 8] [--threads 2]

The volume is nilearn's MNI152 T1 template at 1 mm (197 x 233 x 189, 189 axial slices). End-to-end
covers reading the NIfTI, scaling, slicing, resizing, the MediCLIP forward (image tower, adapters,
cached text features), re-assembly and writing map, mask and .seg.nrrd. The bare forward is the open_clip
image tower alone on the same slices at the same batch size. Random weights (no download): speed does not
depend on the weight values.
"""

import argparse
import logging
import os
import tempfile
import time

import nibabel as nib
import torch

from mediclip_monai.inference import run_inference
from mediclip_monai.inferers import SliceWiseInferer, to_clip_input
from mediclip_monai.networks import MediCLIP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip_model", default="ViT-B-16")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    with tempfile.TemporaryDirectory() as tmp:
        volume_path = os.path.join(tmp, "mni152.nii.gz")
        nib.save(nib.Nifti1Image(template.get_fdata().astype("float32"), template.affine), volume_path)
        network = MediCLIP(args.clip_model, "none").eval()
        inferer = SliceWiseInferer(network, batch_size=args.batch_size)
        n_slices = template.shape[2]

        start = time.perf_counter()
        run_inference(volume_path, os.path.join(tmp, "out"), inferer)
        end_to_end = time.perf_counter() - start

        slices = torch.rand(n_slices, *template.shape[:2])
        batches = [
            to_clip_input(slices[i : i + args.batch_size], network.image_size)
            for i in range(0, n_slices, args.batch_size)
        ]
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                network.backbone.clip.visual(batch)
        bare = time.perf_counter() - start

    print(f"backbone {args.clip_model}, {n_slices} slices, batch {args.batch_size}, {args.threads} threads, CPU")
    print(f"end-to-end inference   : {end_to_end:7.2f} s ({end_to_end / n_slices * 1000:.0f} ms/slice)")
    print(f"bare image-tower forward: {bare:7.2f} s ({bare / n_slices * 1000:.0f} ms/slice)")
    print(f"ratio end-to-end / bare : {end_to_end / bare:7.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
