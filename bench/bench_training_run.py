"""A whole training run on the demo data: its wall time and the share of it spent in validation.

    python bench/bench_training_run.py [--clip_model ViT-B-16] [--epochs 3] [--threads 2] [--baseline]

Runs bundle/configs/train.json as `python -m monai.bundle run training` does (in this process, through
MONAI's ConfigWorkflow) with random backbone weights on the CPU, and prints the wall time from the start
of the workflow to its end (building the network and the demo data, the epochs, every validation round,
the calibration at the end), the time of each validation round and their share of the wall time. The
validation set is fixed and the backbone frozen, so with the token cache only the first round runs the
image tower, and the text features that a round and the next training step share are computed once,
after the epoch (`NextStepTextFeatures`). ``--baseline`` also runs with ``--feature_cache_gb 0``, without
`NextStepTextFeatures` and with the whole text transformer (the run as it was before), for the
before/after figure in one invocation.
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
from contextlib import ExitStack
from unittest import mock

import torch
from baseline import whole_text_transformer
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from mediclip_monai.handlers import NextStepTextFeatures
from mediclip_monai.networks import clip_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "bundle", "configs", "train.json")


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
        }
        with ExitStack() as before:
            if not savings:
                before.enter_context(mock.patch.object(clip_backbone, "_encode_end_of_text", whole_text_transformer))
                before.enter_context(mock.patch.object(NextStepTextFeatures, "__call__", lambda self, engine: None))
            start = time.perf_counter()
            workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **overrides)
            workflow.initialize()
            trainer = workflow.parser.get_parsed_content("train#trainer")
            evaluator = workflow.parser.get_parsed_content("validate#evaluator")
            rounds, marks = [], {}
            evaluator.add_event_handler(Events.STARTED, lambda _: marks.__setitem__("round", time.perf_counter()))
            evaluator.add_event_handler(Events.COMPLETED, lambda _: rounds.append(time.perf_counter() - marks["round"]))
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
            f"{r['after']:.1f}; validation {validation / r['wall'] * 100:.1f}% of the wall time (target <= 15%)",
            flush=True,
        )


if __name__ == "__main__":
    main()
