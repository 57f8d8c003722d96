"""A whole training run on the demo data: its wall time and the share of it spent in validation.

    python bench/bench_training_run.py [--clip_model ViT-B-16] [--epochs 3] [--threads 2] [--baseline]

Runs bundle/configs/train.json as `python -m monai.bundle run training` does (in this process, through
MONAI's ConfigWorkflow) with random backbone weights on the CPU, and prints the wall time from the start
of the workflow to its end (building the network and the demo data, the epochs, every validation round,
the calibration at the end), the time of each validation round and their share of the wall time. The
validation set is fixed and the backbone frozen, so with the token cache only the first round runs the
image tower, and the text-tower forward of every round but the last is reused by the next training step
(printed apart: the share without it is what validating adds to training). ``--baseline`` also runs with
``--feature_cache_gb 0``, no reuse of the text forward and the whole text transformer (the run as it was
before), for the before/after figure in one invocation.
"""

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--clip_model", default="ViT-B-16")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--num_workers", type=int, default=2)
parser.add_argument("--baseline", action="store_true", help="also run without the token cache")
args = parser.parse_args()
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import logging
import tempfile
import time
from contextlib import nullcontext
from unittest import mock

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from mediclip_monai.networks import prompts as prompts_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "bundle", "configs", "train.json")


def whole_text_transformer(transformer, x, eot, causal_mask, causal):
    out = transformer(x, attn_mask=causal_mask if causal else None)
    return out[torch.arange(out.shape[0]), eot]


def timed_run(savings: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "bundle_root": os.path.join(REPO, "bundle"),
            "demo_dir": os.path.join(tmp, "demo"),
            "output_dir": os.path.join(tmp, "runs"),
            "ckpt_dir": os.path.join(tmp, "models"),
            "clip_model": args.clip_model,
            "clip_pretrained": "none",
            "device": "cpu",
            "epochs": args.epochs,
            "num_workers": args.num_workers,
            "feature_cache_gb": 2.0 if savings else 0,
            "network_def#keep_eval_text_graph": savings,
        }
        text_path = (
            nullcontext()
            if savings
            else mock.patch.object(prompts_module, "_encode_end_of_text", whole_text_transformer)
        )
        with text_path:
            start = time.perf_counter()
            workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **overrides)
            workflow.initialize()
            trainer = workflow.parser.get_parsed_content("train#trainer")
            evaluator = workflow.parser.get_parsed_content("validate#evaluator")
            rounds, text_forwards, marks = [], [], {}

            def round_started(_):
                marks["round"] = time.perf_counter()
                text_forwards.append(0.0)

            evaluator.add_event_handler(Events.STARTED, round_started)
            evaluator.add_event_handler(Events.COMPLETED, lambda _: rounds.append(time.perf_counter() - marks["round"]))
            prompts = workflow.parser.get_parsed_content("network_def").prompts
            encode = prompts._encode

            def timed_encode():  # the text forward of a round (kept for the next training step, with savings)
                start = time.perf_counter()
                features = encode()
                if len(text_forwards) > len(rounds):  # inside a validation round
                    text_forwards[-1] += time.perf_counter() - start
                return features

            prompts._encode = timed_encode
            trainer.add_event_handler(Events.STARTED, lambda _: marks.__setitem__("train", time.perf_counter()))
            trainer.add_event_handler(Events.COMPLETED, lambda _: marks.__setitem__("trained", time.perf_counter()))
            workflow.run()
            end = time.perf_counter()
            n_validation = len(workflow.parser.get_parsed_content("data").validation)
            n_train = len(workflow.parser.get_parsed_content("data").train)
            workflow.finalize()
    return {
        "wall": end - start,
        "setup": marks["train"] - start,
        "training": marks["trained"] - marks["train"] - sum(rounds),
        "rounds": rounds,
        # Every round but the last is followed by a training step that reuses its text forward.
        "handed_on": sum(text_forwards[:-1]) if savings else 0.0,
        "after": end - marks["trained"],
        "n_validation": n_validation,
        "n_train": n_train,
    }


def main() -> None:
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    runs = ([("before (no token cache, whole text transformer)", False)] if args.baseline else []) + [("now", True)]
    for label, savings in runs:
        r = timed_run(savings)
        validation = sum(r["rounds"])
        rounds = ", ".join(f"{t:.1f}" for t in r["rounds"])
        print(
            f"{args.clip_model}, {args.epochs} epochs, demo ({r['n_train']} training slices, {r['n_validation']} "
            f"validation cases), {label}: wall {r['wall']:.1f} s = setup {r['setup']:.1f} + epochs "
            f"{r['training']:.1f} + validation {validation:.1f} (rounds {rounds}) + calibration and report "
            f"{r['after']:.1f}; validation {validation / r['wall'] * 100:.1f}% of the wall time (target <= 15%), "
            f"{(validation - r['handed_on']) / r['wall'] * 100:.1f}% without the text forwards that the next "
            f"training steps reuse ({r['handed_on']:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
