"""Does `torch.compile` pay for the two frozen towers? Compile time, then seconds per call, eager vs compiled.

    python bench/bench_compile.py [--clip_model ViT-B-16] [--device cpu] [--threads 2] [--repeats 5]

The image tower: the tapped patch tokens of a batch of 8 (no gradient), as a training step or inference
runs it. The text tower: the 21 prompts' features forward and backward to the contexts, as a training step
runs it. Random weights (speed does not depend on them). Printed: the first compiled call (compilation
included), the mean of ``--repeats`` calls after it, the eager mean, and the largest difference of the
outputs.
"""

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--clip_model", default="ViT-B-16")
parser.add_argument("--device", default="cpu")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
args = parser.parse_args()
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import logging
import statistics
import time

import torch

from mediclip_monai.networks import MediCLIP


def seconds(call, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.mean(times), out


def compare(name: str, eager, compiled) -> None:
    eager_time, eager_out = seconds(eager, 1 + args.repeats)  # the first eager call warms the allocator up
    start = time.perf_counter()
    compiled()
    first = time.perf_counter() - start
    compiled_time, compiled_out = seconds(compiled, args.repeats)
    difference = max((a - b).abs().max().item() for a, b in zip(eager_out, compiled_out))
    print(
        f"{name}: eager {eager_time:.3f} s, compiled {compiled_time:.3f} s ({eager_time / compiled_time:.2f}x), "
        f"first compiled call {first:.1f} s; largest difference {difference:.1e}",
        flush=True,
    )


def main() -> None:
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    network = MediCLIP(args.clip_model, "none").to(args.device).train()
    images = torch.randn(8, 3, *network.input_contract.image_size, device=args.device)
    visual, layers = network.backbone.clip.visual, [i - 1 for i in network.backbone.feature_layers]

    def image_tower(forward):
        def run():
            with torch.no_grad():
                return forward(images, indices=layers, stop_early=True, intermediates_only=True, output_fmt="NCHW")[
                    "image_intermediates"
                ]

        return run

    prompts = network.prompts

    def text_tower(encode):
        def run():
            prompts.context.grad = None
            encode().sum().backward()
            return [prompts.context.grad.clone()]

        return run

    print(f"{args.clip_model} on {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    compile_options = {} if args.mode is None else {"mode": args.mode}
    compare(
        "image tower (batch 8, no grad)",
        image_tower(visual.forward_intermediates),
        image_tower(torch.compile(visual.forward_intermediates, **compile_options)),
    )
    compare(
        "text tower (21 prompts, forward + backward)",
        text_tower(prompts._encode),
        text_tower(torch.compile(prompts._encode, **compile_options)),
    )


if __name__ == "__main__":
    main()
