"""Memory bank and calibration: build times, the cost of each anomaly branch, and the size of model.pt.

    python bench/bench_memory_bank.py [--clip_model ViT-B-16] [--threads 2] [--volume_slices 120] [--skip_vit_l]

1. Bank building (`workflows.calibrate.build_memory_bank`, the function training ends with): the backbone
   pass over the shots and the coreset, for k = 16 2D shots and for k = 16 volume shots of
   ``--volume_slices`` slices each, of which ``memory_bank_slices`` (train.json's default) evenly spaced
   ones feed the bank. Targets: seconds for 2D shots, under a minute for volumes with ViT-B-16 on CPU.
2. The network forward at batch 8 with each ``anomaly_branch`` vs the bare open_clip image tower
   (bank at its default bound, calibration fitted on random cases). Target: fused within 1.25x.
3. model.pt with a full bank, the shots' global descriptors (16 volume shots x ``memory_bank_slices``) and a
   calibration with its image-level rule: its size for the benchmarked backbone and, projected,
   for ViT-L-14 (a random ViT-L-14 network whose bank is filled to the default bound; target well
   under 100 MB).
Random weights and random images (no download): speed and size do not depend on their values. Times are
wall-clock seconds, with the process's CPU seconds beside them: on a shared machine the wall time grows
with the other load, the CPU time much less (with N threads an idle machine's wall time is about CPU / N).
"""

import argparse
import io
import logging
import time

import torch
from monai.transforms import Compose
from train_recipe import train_recipe

from mediclip_monai.decisions import BRANCHES, Decisions, calibration
from mediclip_monai.decisions.image_level import SIGNALS, fit_image_level
from mediclip_monai.networks import MediCLIP, PatchMemoryBank
from mediclip_monai.networks.memory_bank import DEFAULT_MAX_PATCHES
from mediclip_monai.workflows.calibrate import bank_slice_indices, build_memory_bank


def memory_bank_slices() -> int:
    """train.json's ``memory_bank_slices`` (read when a benchmark runs, not at import)."""
    return train_recipe()["memory_bank_slices"]


BATCH = 8


def preprocessing(network: MediCLIP) -> Compose:
    """train.json's validation preprocessing for ``network`` (its CLIP input, typed)."""
    return train_recipe(network_def=network).get_parsed_content("validate::preprocessing")


class Stopwatch:
    """Wall-clock and process CPU seconds of a block: ``with Stopwatch() as t: ...; t.wall, t.cpu``."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:6.1f} s ({self.cpu:6.1f} CPU s)"


def timed(fn, repeats: int = 3) -> Stopwatch:
    """Mean wall and CPU seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    with Stopwatch() as watch:
        for _ in range(repeats):
            fn()
    watch.wall, watch.cpu = watch.wall / repeats, watch.cpu / repeats
    return watch


def calibrate_random_network(network: MediCLIP, seed: int = 0) -> MediCLIP:
    """A bank at the default bound (random unit tokens), the global descriptors of 16 volume shots' bank slices
    and a calibration fitted on random cases, with an image-level rule fitted on random signals.

    What a trained model.pt carries, in size and in cost; the values mean nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    layers, width = len(network.backbone.feature_layers), network.backbone.vision_width
    side = int(DEFAULT_MAX_PATCHES**0.5)  # 64 x 64 = 4096 patches: the bound exactly, no coreset needed
    tokens = [torch.randn(1, width, side, side, generator=generator) for _ in range(layers)]
    device = next(network.parameters()).device
    network.memory_bank = PatchMemoryBank().build(tokens).to(device)
    size = network.input_contract.image_size
    images = torch.rand(4, 1, *size, generator=generator)
    masks = torch.zeros(4, *size)
    masks[1::2, size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = 1.0
    with torch.no_grad():
        to_input = preprocessing(network)
        inputs = torch.stack([to_input({"image": i, "label": i})["image"] for i in images])
        maps = network.anomaly_maps_from_tokens(network.patch_tokens(inputs.to(device)), size)
    fitted = calibration.calibrate(maps["mediclip"], maps["memory_bank"], images[:, 0], masks)
    shot_slices = 16 * memory_bank_slices()
    class_tokens = [torch.randn(shot_slices, width, generator=generator) for _ in range(layers)]
    network.shot_embeddings.build(class_tokens, torch.randn(shot_slices, network.backbone.embed_dim))
    signals = {name: torch.randn(40, generator=generator).numpy() for name in SIGNALS}
    copies = [0] * 20 + [1] * 20
    fitted["image_level"] = fit_image_level(signals, copies, list(range(20)) * 2, [1.0] * 40, fitted["default_branch"])
    network.decisions = Decisions(fitted)
    return network


def state_size_mb(network: MediCLIP) -> float:
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    return buffer.tell() / 1e6


def bench_bank_building(network: MediCLIP, volume_slices: int) -> None:
    size = network.input_contract.image_size
    shots_2d = [{"image": torch.rand(1, *size)} for _ in range(16)]
    with Stopwatch() as watch:
        bank = build_memory_bank(network, shots_2d, preprocessing(network))
    print(f"  k=16 2D shots: {watch} -> bank of {bank.size} patches")

    shot_slices = [list(range(s * volume_slices, (s + 1) * volume_slices)) for s in range(16)]
    per_shot = memory_bank_slices()
    chosen = bank_slice_indices(shot_slices, per_shot)
    slices = [{"image": torch.rand(1, *size)} for _ in chosen]  # only the chosen slices are ever read
    with Stopwatch() as watch:
        bank = build_memory_bank(network, slices, preprocessing(network))
    print(
        f"  k=16 volumes of {volume_slices} slices, {per_shot} evenly spaced of each = {len(chosen)} "
        f"slices: {watch} -> bank of {bank.size} patches (target < 60 s at ViT-B-16)"
    )


def bench_branches(network: MediCLIP) -> None:
    calibrate_random_network(network)
    images = torch.randn(BATCH, 3, *network.input_contract.image_size)
    with torch.no_grad():
        bare = timed(lambda: network.backbone.clip.visual(images))
        print(f"  bare image tower     : {bare}")
        for branch in BRANCHES:
            network.anomaly_branch = branch
            watch = timed(lambda: network(images))
            print(
                f"  forward, {branch:12s}: {watch}: {watch.wall / bare.wall:.2f}x the bare tower's wall time, "
                f"{watch.cpu / bare.cpu:.2f}x its CPU time"
            )
    network.anomaly_branch = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip_model", default="ViT-B-16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--volume_slices", type=int, default=120)
    parser.add_argument("--skip_vit_l", action="store_true", help="no ViT-L-14 model.pt projection")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    network = MediCLIP(args.clip_model, "none").eval()
    print(f"backbone {args.clip_model}, {args.threads} threads, CPU, batch {BATCH}")
    print("memory bank building (backbone pass + coreset):")
    bench_bank_building(network, args.volume_slices)
    print("network forward per anomaly branch:")
    bench_branches(network)
    print("model.pt with a full bank and calibration:")
    print(f"  {args.clip_model}: {state_size_mb(network):6.1f} MB (bank {tuple(network.memory_bank.patches.shape)})")
    if not args.skip_vit_l and args.clip_model != "ViT-L-14":
        del network
        large = calibrate_random_network(MediCLIP("ViT-L-14", "none").eval())
        print(f"  ViT-L-14: {state_size_mb(large):6.1f} MB (bank {tuple(large.memory_bank.patches.shape)})")


if __name__ == "__main__":
    main()
