"""Inference speed: the bundle's inference recipe end to end vs the network alone and the bare image tower.

    python bench/bench_inference.py [--clip_model ViT-B-16] [--batch_size 8] [--threads 2] [--device cpu]
                                    [--calibrated] [--volumes 1] [--num_workers 2] [--before REV]

The volume is nilearn's MNI152 T1 template at 1 mm (197 x 233 x 189, 189 axial slices); ``--volumes N``
writes N copies (an archive of N cases). End-to-end is ``evaluator.run()`` of bundle/configs/inference.json
(run from the repository root) with the network already loaded from a model.pt: finding the cases, reading
each NIfTI in DataLoader workers, scaling, the slice-wise inferer (axial views, resizing, the network's input
contract, the MediCLIP forward), re-assembly, scoring, writing map, mask and .seg.nrrd and the run's index.
The network alone is the model's own forward (image tower, adapters, memory bank with ``--calibrated``) on the
same slices at the same batch size, inputs prepared beforehand; the bare forward is the open_clip image tower
alone on them. Random weights (no download): speed does not depend on the weight values. ``--calibrated``:
model.pt also carries a memory bank at its default bound and a calibration
(``bench_memory_bank.calibrate_random_network``), so inference writes the fused map, the default of a
trained model.

Printed: each time per volume, the ratio to the bare tower, and the time per slice that is not the network
(end-to-end minus the network alone): reading, resizing, scoring, writing and waiting. ``--before REV`` runs
the same measurement on the package and configs of git revision REV in turns with this checkout's
(``before_after.py``). Targets: on a GPU one volume within 1.5x the bare tower and an archive (>= 8 volumes)
within 1.25x; with the tiny backbone on the CPU, the time per slice that is not the network 3x smaller than
before.
"""

import argparse
import json
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--clip_model", default="ViT-B-16")
parser.add_argument("--batch_size", type=int, default=8)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--device", default="cpu")
parser.add_argument("--calibrated", action="store_true", help="model.pt with memory bank and calibration")
parser.add_argument("--volumes", type=int, default=1, help="cases in the run (copies of the volume)")
parser.add_argument("--num_workers", type=int, default=2, help="reading processes")
parser.add_argument("--before", metavar="REV", help="also measure git revision REV, in turns with this checkout")
parser.add_argument("--rounds", type=int, default=3, help="turns of each with --before")
parser.add_argument("--json", action="store_true", help="print the figures as one JSON line (for --before)")
args = parser.parse_args()
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import contextlib
import logging
import tempfile
import time

import nibabel as nib
import torch

INFERENCE = os.path.join("bundle", "configs", "inference.json")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forwards(module, batches, device) -> float:
    with torch.no_grad():
        module(batches[0].to(device))  # warm-up (kernels, caches)
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            module(batch.to(device))
        synchronize(device)
    return time.perf_counter() - start


def measure() -> dict:
    from bench_memory_bank import calibrate_random_network
    from monai.bundle import ConfigWorkflow
    from nilearn.datasets import load_mni152_template

    from mediclip_monai.networks import MediCLIP
    from mediclip_monai.transforms import ModelInput

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    template = load_mni152_template(resolution=1)
    n_slices = template.shape[2]
    with tempfile.TemporaryDirectory() as tmp:
        cases = os.path.join(tmp, "cases")
        os.makedirs(cases)
        volume = template.get_fdata().astype("float32")
        for i in range(args.volumes):
            nib.save(nib.Nifti1Image(volume, template.affine), os.path.join(cases, f"mni152_{i:02d}.nii.gz"))
        network = MediCLIP(args.clip_model, "none").eval()
        if args.calibrated:
            calibrate_random_network(network)
        torch.save(network.state_dict(), os.path.join(tmp, "model.pt"))
        workflow = ConfigWorkflow(
            config_file=INFERENCE,
            workflow_type="infer",
            logging_file=False,
            input=cases if args.volumes > 1 else os.path.join(cases, "mni152_00.nii.gz"),
            output_dir=os.path.join(tmp, "out"),
            ckpt_dir=tmp,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            threshold=None if args.calibrated else 0.5,  # null: the calibrated one, which only --calibrated has
        )
        workflow.initialize()
        evaluator = workflow.evaluator  # builds the network from model.pt, the data loader and the handlers
        start = time.perf_counter()
        evaluator.run()
        end_to_end = (time.perf_counter() - start) / args.volumes

        network = network.to(device)
        model_input = ModelInput(network.input_contract)
        slices = torch.rand(n_slices, 1, *template.shape[:2])
        batches = [model_input(slices[i : i + args.batch_size]) for i in range(0, n_slices, args.batch_size)]
        # the network in the precision inference runs it in (bfloat16 autocast on a GPU by default)
        precision = getattr(workflow.parser.get_parsed_content("inferer"), "precision", None)  # None: older code
        with precision.autocast(args.batch_size) if precision is not None else contextlib.nullcontext():
            network_alone = timed_forwards(network, batches, device)
            bare = timed_forwards(network.backbone.clip.visual, batches, device)
    figures = {"end_to_end": end_to_end, "network": network_alone, "bare": bare, "slices": n_slices}
    if device.type == "cuda":
        figures["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return figures


def describe(label: str, r: dict) -> str:
    per_slice = (r["end_to_end"] - r["network"]) / r["slices"] * 1000
    return (
        f"{label}: end-to-end {r['end_to_end']:.2f} s per volume ({r['end_to_end'] / r['bare']:.2f}x the bare tower "
        f"{r['bare']:.2f} s; the network alone {r['network']:.2f} s); not the network: {per_slice:.1f} ms per slice"
    )


def main() -> None:
    if args.json:
        print(json.dumps(measure()))
        return
    where = f"{args.threads} threads, CPU" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    branch = "fused (calibrated)" if args.calibrated else "mediclip"
    print(
        f"backbone {args.clip_model}, branch {branch}, {args.volumes} volume(s) of 189 slices, batch "
        f"{args.batch_size}, {args.num_workers} reading workers, {where}"
    )
    if not args.before:
        print(describe("now", measure()))
        return
    from before_after import medians_in_turns

    b, n = medians_in_turns(os.path.abspath(__file__), args.before, args.rounds)
    for label, figures in ((f"before ({args.before})", b), ("now", n)):
        print(describe(label, figures) + f" (median of {args.rounds} runs)")
    overhead = [(r["end_to_end"] - r["network"]) / r["slices"] for r in (b, n)]
    print(f"time per slice that is not the network: {overhead[0] / overhead[1]:.1f}x smaller (target >= 3x)")


if __name__ == "__main__":
    main()
