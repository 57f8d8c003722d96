"""The GPU figures in one run: step times per precision, the paper's recipe end to end, inference vs the tower.

    python bench/bench_gpu.py [--clip_model ViT-L-14] [--device cuda] [--epochs 200] [--volumes 8]
    python bench/bench_gpu.py --clip_model mediclip-tiny --device cpu --epochs 3 --volumes 2 --steps 2  # smoke

Random backbone weights (speed does not depend on their values), the demo data. Printed:

1. the training step (batch 8: backbone forward, heads, text tower forward and backward, loss, Adam) in
   float32, float16 autocast with a GradScaler and bfloat16 autocast, median ms;
2. the network's inference forward per image at batch 1, 8 and 64 in float32 and in the default precision
   of the device (what ``precision.AMP_MIN_BATCH`` is chosen from);
3. the paper's recipe end to end (train.json's defaults: k = 16, batch 8, validation every epoch, then the
   memory bank and calibration) for ``--epochs`` epochs: the whole run and the median epoch
   (``bench_epoch.py``); target <= 60 s for 200 epochs of ViT-L-14 on one GPU;
4. inference of one volume and of an archive of ``--volumes`` volumes (189 slices each, calibrated model,
   fused map) against the bare image tower (``bench_inference.py``); targets 1.5x and 1.25x;
5. the peak GPU memory of each part.
"""

import argparse
import logging
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def step_times(clip_model: str, device: torch.device, steps: int, batch: int = 8) -> dict[str, float]:
    """Median ms of a training step per precision (fresh adapters and prompts for each)."""
    from mediclip_monai.losses import MediCLIPLoss
    from mediclip_monai.networks import MediCLIP
    from mediclip_monai.precision import Precision

    precisions = {"float32": Precision(device.type, None), "bfloat16 autocast": Precision(device.type, torch.bfloat16)}
    if device.type == "cuda":
        precisions["float16 autocast + GradScaler"] = Precision("cuda", torch.float16)
    size = 224
    images = torch.randn(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
    loss_function = MediCLIPLoss()
    times = {}
    for name, precision in precisions.items():
        network = MediCLIP(clip_model, "none").to(device).train()
        optimizer = torch.optim.Adam(network.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
        scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
        durations = []
        for step in range(steps + 3):  # 3 warm-up steps
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = loss_function(network(images).float(), masks)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= 3:
                durations.append(time.perf_counter() - start)
        times[name] = statistics.median(durations) * 1000
        del network, optimizer
    return times


def forward_times(clip_model: str, device: torch.device, repeats: int) -> dict[str, dict[int, float]]:
    """ms per image of the network's inference forward, per precision and batch size."""
    from mediclip_monai.networks import MediCLIP
    from mediclip_monai.precision import Precision, resolve_precision

    network = MediCLIP(clip_model, "none").to(device).eval()
    default = resolve_precision(None if device.type == "cuda" else True, device)
    results = {}
    for name, precision in (("float32", Precision(device.type, None)), (str(default), default)):
        results[name] = {}
        for batch in (1, 8, 64):
            images = torch.randn(batch, 3, 224, 224, device=device)
            durations = []
            with torch.no_grad(), precision.autocast():
                for i in range(repeats + 2):
                    start = time.perf_counter()
                    network(images)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if i >= 2:
                        durations.append(time.perf_counter() - start)
            results[name][batch] = statistics.median(durations) * 1000 / batch
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip_model", default="ViT-L-14")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per precision")
    parser.add_argument("--batch_size", type=int, default=32, help="slices per forward at inference")
    parser.add_argument("--num_workers", type=int, default=4, help="data loading processes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # open_clip's "initialized randomly", on purpose here
    sys.path.insert(0, HERE)
    from before_after import run_json

    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{args.clip_model}, random weights, {where}, torch {torch.__version__}", flush=True)

    def peak() -> str:
        if device.type != "cuda":
            return ""
        gb = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return f"; peak GPU memory {gb:.1f} GiB"

    steps = step_times(args.clip_model, device, args.steps)
    print("1. training step, batch 8: " + ", ".join(f"{k} {v:.1f} ms" for k, v in steps.items()) + peak(), flush=True)

    forwards = forward_times(args.clip_model, device, max(3, args.steps // 2))
    lines = [", ".join(f"batch {b}: {ms:.2f}" for b, ms in per_batch.items()) for per_batch in forwards.values()]
    for name, figures in zip(forwards, lines):
        print(f"2. inference forward, ms per image, {name}: {figures}", flush=True)
    if device.type == "cuda":
        print(f"   {peak().lstrip('; ')}", flush=True)

    common = ["--clip_model", args.clip_model, "--device", args.device, "--threads", str(args.threads)]
    run = run_json(
        os.path.join(HERE, "bench_epoch.py"),
        [*common, "--epochs", str(args.epochs), "--num_workers", str(args.num_workers)],
    )
    memory = f"; peak GPU memory {run['peak_gpu_memory_gb']:.1f} GiB" if "peak_gpu_memory_gb" in run else ""
    print(
        f"3. paper's recipe (k = 16, batch 8, validation every epoch), {args.epochs} epochs + bank and calibration: "
        f"{run['run']:.1f} s (target <= 60 s for 200 epochs of ViT-L-14); median epoch {run['epoch']:.3f} s = "
        f"iterations {run['iterations']:.3f} + validation {run['validation']:.3f} + the rest {run['rest']:.3f}"
        f"{memory}",
        flush=True,
    )

    for volumes, target in ((1, 1.5), (args.volumes, 1.25)):
        r = run_json(
            os.path.join(HERE, "bench_inference.py"),
            [
                *common,
                "--calibrated",
                "--volumes",
                str(volumes),
                "--batch_size",
                str(args.batch_size),
                "--num_workers",
                str(args.num_workers),
            ],
        )
        memory = f"; peak GPU memory {r['peak_gpu_memory_gb']:.1f} GiB" if "peak_gpu_memory_gb" in r else ""
        print(
            f"4. inference, {volumes} volume(s) of {r['slices']} slices, fused map, batch {args.batch_size}: "
            f"{r['end_to_end']:.2f} s per volume = {r['end_to_end'] / r['bare']:.2f}x the bare tower "
            f"({r['bare']:.2f} s; the network alone {r['network']:.2f} s; target <= {target}x){memory}",
            flush=True,
        )


if __name__ == "__main__":
    main()
