"""Inference speed on one 3D volume: the bundle's inference recipe end to end vs the bare frozen image tower.

    python bench/bench_inference.py [--clip_model ViT-B-16] [--batch_size 8] [--threads 2] [--device cpu] [--calibrated]

The volume is nilearn's MNI152 T1 template at 1 mm (197 x 233 x 189, 189 axial slices). End-to-end is
``evaluator.run()`` of bundle/configs/inference.json (run from the repository root), with the network
already loaded from a model.pt: finding the case, reading the NIfTI in a DataLoader worker, scaling, the
slice-wise inferer (axial views, resizing, the network's input contract, the MediCLIP forward: image tower,
adapters, cached text features), re-assembly, scoring, writing map, mask and .seg.nrrd into the case
folder and the run's index. The bare forward is the open_clip image tower alone on the same number of
slices at the same batch size, inputs prepared beforehand. Random weights (no download): speed does not
depend on the weight values. ``--calibrated``: model.pt also carries a memory bank at its default bound
and a calibration (``bench_memory_bank.calibrate_random_network``), so inference writes the fused map,
the default of a trained model (target: within 1.25x of the bare tower).
"""

import argparse
import logging
import os
import tempfile
import time

import nibabel as nib
import torch
import torch.nn.functional as F
from bench_memory_bank import calibrate_random_network
from monai.bundle import ConfigWorkflow

from mediclip_monai.networks import MediCLIP
from mediclip_monai.transforms import ClipInput

INFERENCE = os.path.join("bundle", "configs", "inference.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip_model", default="ViT-B-16")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibrated", action="store_true", help="model.pt with memory bank and calibration")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    n_slices = template.shape[2]
    with tempfile.TemporaryDirectory() as tmp:
        volume_path = os.path.join(tmp, "mni152.nii.gz")
        nib.save(nib.Nifti1Image(template.get_fdata().astype("float32"), template.affine), volume_path)
        network = MediCLIP(args.clip_model, "none").eval()
        if args.calibrated:
            calibrate_random_network(network)
        torch.save(network.state_dict(), os.path.join(tmp, "model.pt"))
        workflow = ConfigWorkflow(
            config_file=INFERENCE,
            workflow_type="infer",
            logging_file=False,
            input=volume_path,
            output_dir=os.path.join(tmp, "out"),
            ckpt_dir=tmp,
            device=args.device,
            batch_size=args.batch_size,
            threshold=None if args.calibrated else 0.5,  # null: the calibrated one, which only --calibrated has
        )
        workflow.initialize()
        evaluator = workflow.evaluator  # builds the network from model.pt, the data loader and the handlers
        start = time.perf_counter()
        evaluator.run()
        end_to_end = time.perf_counter() - start

        device = torch.device(args.device)
        visual = network.to(device).backbone.clip.visual
        contract = network.input_contract
        clip_input = ClipInput(contract.mean, contract.std)
        slices = torch.rand(n_slices, 1, *template.shape[:2])
        batches = [
            clip_input(F.interpolate(slices[i : i + args.batch_size], size=contract.image_size, mode="bilinear"))
            for i in range(0, n_slices, args.batch_size)
        ]
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                visual(batch.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare = time.perf_counter() - start

    where = f"{args.threads} threads, CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"backbone {args.clip_model}, {n_slices} slices, batch {args.batch_size}, {where}")
    print(f"anomaly branch: {network.anomaly_branch}")
    print(f"end-to-end inference    : {end_to_end:7.2f} s ({end_to_end / n_slices * 1000:.0f} ms/slice)")
    print(f"bare image-tower forward: {bare:7.2f} s ({bare / n_slices * 1000:.0f} ms/slice)")
    target = 1.25 if args.calibrated else 1.1
    print(f"ratio end-to-end / bare : {end_to_end / bare:7.2f} (target <= {target})")


if __name__ == "__main__":
    main()
