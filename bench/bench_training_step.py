"""Training speed: seconds per step and the share of it spent outside the model forward/backward.

    python bench/bench_training_step.py [--clip_model mediclip-tiny ViT-B-16] [--steps 20] [--num_workers 2]

Runs the training recipe of bundle/configs/train.json (demo data, k = 16 shots, batch 8, anomaly synthesis
in DataLoader workers, Focal + Dice, Adam) on the CPU with random backbone weights (speed does not depend
on the weight values). "Outside" is the time the loop waits for the next batch: data loading, anomaly
synthesis, collation. Target: under 15% of the step with 2 workers.
"""

import argparse
import logging
import os
import statistics
import tempfile
import time

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureTyped
from monai.utils import set_determinism

from mediclip_monai.data.resolve import resolve_datalist
from mediclip_monai.losses import MediCLIPLoss
from mediclip_monai.networks import MediCLIP
from mediclip_monai.training import prepare_few_shot_data
from mediclip_monai.transforms import ClipInputd, RandAnomalySynthesisd


def bench(clip_model: str, data, steps: int, num_workers: int, batch_size: int) -> dict:
    network = MediCLIP(clip_model, "none")
    network.train()
    optimizer = torch.optim.Adam(network.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
    loss_function = MediCLIPLoss()
    transform = Compose(
        [
            RandAnomalySynthesisd(keys="image", support_images=data.support_images),
            ClipInputd(keys="image", mean=network.input_contract.mean, std=network.input_contract.std),
            EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
        ]
    )
    loader = DataLoader(
        Dataset(data.train, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=True,
    )
    waits, computes = [], []
    done = 0
    while done < steps + 2:
        iterator = iter(loader)
        while done < steps + 2:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            loaded = time.perf_counter()
            optimizer.zero_grad()
            loss = loss_function(network(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            end = time.perf_counter()
            if done >= 2:  # the first steps include worker start-up
                waits.append(loaded - start)
                computes.append(end - loaded)
            done += 1
    step = statistics.mean(w + c for w, c in zip(waits, computes))
    return {"step": step, "outside": statistics.mean(waits), "share": statistics.mean(waits) / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip_model", nargs="+", default=["mediclip-tiny", "ViT-B-16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--k_shot", type=int, default=16)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    set_determinism(0)
    with tempfile.TemporaryDirectory() as tmp:
        demo = os.path.join(tmp, "demo")
        data = prepare_few_shot_data(resolve_datalist(None, demo, demo, tmp), args.k_shot, 0, 224)
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.num_workers} workers")
    for clip_model in args.clip_model:
        r = bench(clip_model, data, args.steps, args.num_workers, args.batch_size)
        print(
            f"{clip_model:14s} {r['step']:6.3f} s/step; waiting for data {r['outside'] * 1000:6.1f} ms "
            f"= {r['share'] * 100:4.1f}% of the step (target < 15%)"
        )


if __name__ == "__main__":
    main()
