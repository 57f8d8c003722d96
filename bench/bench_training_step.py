"""Training speed per step, on the reference implementation's protocol, and where the step's time goes.

    python bench/bench_training_step.py [--clip_model ViT-B-16] [--steps 10] [--threads 2] [--baseline]
    python bench/bench_training_step.py --data_loader --num_workers 2     # batches from the real DataLoader

The protocol of the side-by-side comparison with the reference code (cnulab/MediCLIP): the same backbone
(random weights: speed does not depend on their values), the same number of CPU threads, batch 8 at
224 x 224, batches made before the clock starts (anomaly synthesis and loading excluded). Here the
batches are drawn from train.json's own recipe (the demo data, k = 16 shots, MediCLIP's synthesis
mixture), so about a quarter of the images are shots the Identity task left unchanged, and the step runs
as `SupervisedTrainer` runs it: `CachedTokenInferer`, Focal + Dice, Adam. The clock starts after one pass
over the pre-made batches, when the token cache knows the shots (a real run gets there within its first
epochs).

Printed per step: the frozen image tower's forwards, the text tower's forward and backward (the 21
prompts), the rest (adapters, maps, loss, their backward, the optimizer step), and the wait for the next
batch (0 for pre-made batches; with ``--data_loader``, the DataLoader's with its workers).
``--baseline`` runs the step as it was before the token cache and the text tower's savings (every image
through the image tower, the whole text transformer) beside it, the two taking turns step by step, for a
before/after figure that drifts of the machine's speed do not bias.
"""

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--clip_model", nargs="+", default=["ViT-B-16"])
parser.add_argument("--steps", type=int, default=10, help="timed steps")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--batch_size", type=int, default=8)
parser.add_argument("--k_shot", type=int, default=16)
parser.add_argument("--premade_epochs", type=int, default=3, help="epochs of batches made before timing")
parser.add_argument("--baseline", action="store_true", help="also time the step without this issue's savings")
parser.add_argument("--data_loader", action="store_true", help="batches from the real DataLoader instead")
parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers (with --data_loader)")
args = parser.parse_args()
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import itertools
import logging
import statistics
import tempfile
import time
from contextlib import contextmanager
from unittest import mock

import torch
from baseline import whole_text_transformer
from monai.data import DataLoader
from monai.engines.utils import PrepareBatchExtraInput
from monai.utils import set_determinism
from train_recipe import train_recipe

from mediclip_monai.losses import MediCLIPLoss
from mediclip_monai.networks import MediCLIP, PatchTokenCache, clip_backbone
from mediclip_monai.workflows.inferers import CachedTokenInferer

PREPARE_BATCH = PrepareBatchExtraInput(extra_keys={"cache_keys": "cache_key", "tasks": "anomaly_task"})


class StepClock:
    """Seconds spent per step in the image tower (forward) and the text tower (forward and backward)."""

    def __init__(self, network: MediCLIP) -> None:
        self.network = network
        self.image = self.text = 0.0

    def reset(self) -> None:
        self.image = self.text = 0.0

    @contextmanager
    def attached(self):
        backbone, prompts = self.network.backbone, self.network.prompts
        tokens, encode = backbone.patch_tokens, prompts._encode

        def timed_tokens(images):
            start = time.perf_counter()
            out = tokens(images)
            self.image += time.perf_counter() - start
            return out

        def timed_encode():
            start = time.perf_counter()
            features = encode()
            self.text += time.perf_counter() - start
            if features.requires_grad:  # its backward: from the features' gradient to the contexts'
                marks = {}
                features.register_hook(lambda grad: marks.__setitem__("start", time.perf_counter()))
                handle = prompts.context.register_post_accumulate_grad_hook(
                    lambda p: self._backward_done(marks, handle)
                )
            return features

        with (
            mock.patch.object(backbone, "patch_tokens", timed_tokens),
            mock.patch.object(prompts, "_encode", timed_encode),
        ):
            yield self

    def _backward_done(self, marks: dict, handle) -> None:
        self.text += time.perf_counter() - marks["start"]
        handle.remove()


def make_loader(recipe) -> tuple[DataLoader, int]:
    """train.json's training DataLoader (one stream of batches over its epochs, a new one at each call) and
    its epoch length."""
    loader = recipe.get_parsed_content("train::dataloader", lazy=False)
    return loader, recipe.get_parsed_content("train::batch_sampler").epoch_length


def timed_steps(clip_model: str, recipe, batches: list, savings: bool):
    """Training steps of one network, as a generator: each ``next`` runs one timed step (the first also
    the warm-up) and gives its figures, so that two variants can take turns, step by step."""
    set_determinism(0)
    network = MediCLIP(clip_model, "none").train()
    optimizer = torch.optim.Adam(network.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
    loss_function = MediCLIPLoss()
    inferer = CachedTokenInferer(PatchTokenCache() if savings else None)
    loader, epoch_length = (None, 0) if batches else make_loader(recipe)
    clock = StepClock(network)
    text_path = clip_backbone._encode_end_of_text if savings else whole_text_transformer

    def source():
        while True:
            yield from (batches if batches else loader)

    warm_up = len(batches) if batches else 2 * epoch_length
    iterator = source()
    with clock.attached():
        for step in itertools.count():
            start = time.perf_counter()
            batch = next(iterator)
            loaded = time.perf_counter()
            clock.reset()
            with mock.patch.object(clip_backbone, "_encode_end_of_text", text_path):
                inputs, labels, _, kwargs = PREPARE_BATCH(batch, torch.device("cpu"))
                optimizer.zero_grad()
                loss = loss_function(inferer(inputs, network, **kwargs), labels)
                loss.backward()
                optimizer.step()
            end = time.perf_counter()
            if step >= warm_up:
                yield {"step": end - loaded, "wait": loaded - start, "image": clock.image, "text": clock.text}


def summary(steps: list[dict]) -> dict:
    mean = {key: statistics.mean(step[key] for step in steps) for key in steps[0]}
    return {
        **mean,
        "median": statistics.median(step["step"] for step in steps),
        "rest": mean["step"] - mean["image"] - mean["text"],
    }


def main() -> None:
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    set_determinism(0)
    source = f"DataLoader, {args.num_workers} workers" if args.data_loader else "pre-made batches"
    with tempfile.TemporaryDirectory() as tmp:
        for clip_model in args.clip_model:
            recipe = train_recipe(
                clip_model=clip_model,
                clip_pretrained="none",
                demo_dir=os.path.join(tmp, "demo"),
                output_dir=os.path.join(tmp, "runs"),
                k_shot=args.k_shot,
                batch_size=args.batch_size,
                num_workers=args.num_workers if args.data_loader else 0,
                epochs=10**6 if args.data_loader else args.premade_epochs,
                device="cpu",
            )
            data = recipe.get_parsed_content("data")
            print(
                f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, {len(data.train)} training slices, "
                f"{source}; mean of {args.steps} steps"
            )
            batches = [] if args.data_loader else list(make_loader(recipe)[0])  # --premade_epochs epochs of them
            runs = [("before (no token cache, whole text transformer)", False)] if args.baseline else []
            runs = {
                label: timed_steps(clip_model, recipe, batches, savings) for label, savings in runs + [("now", True)]
            }
            steps = {label: [] for label in runs}
            for _ in range(args.steps):  # the variants take turns, so that both see the machine alike
                for label, run in runs.items():
                    steps[label].append(next(run))
            results = {}
            for label in runs:
                r = results[label] = summary(steps[label])
                print(
                    f"{clip_model} {label}: {r['step']:.3f} s/step (median {r['median']:.3f}) = image tower "
                    f"{r['image']:.3f} + text tower {r['text']:.3f} + heads, loss, optimizer {r['rest']:.3f}; "
                    f"waiting for data {r['wait'] * 1000:.1f} ms",
                    flush=True,
                )
            if args.baseline:
                before, now = results[next(iter(runs))]["step"], results["now"]["step"]
                print(f"{clip_model}: {now / before:.2f}x the step before ({(1 - now / before) * 100:.0f}% faster)")


if __name__ == "__main__":
    main()
