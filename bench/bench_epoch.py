"""What one training epoch costs beside its network: the tiny backbone's epochs of the demo recipe.

    python bench/bench_epoch.py [--epochs 12] [--threads 2] [--num_workers 2] [--device cpu] [--before REV]

Runs bundle/configs/train.json (the demo data, k = 16 shots, batch 8, validation every epoch) through MONAI's
ConfigWorkflow with the tiny random-weight backbone (``mediclip-tiny``), whose network costs next to nothing,
so what an epoch takes is mostly what is around the network: data loading and synthesis, validation's
bookkeeping and metrics, handlers, checkpoints. Printed: the median time of an epoch with its validation
round (epochs after the first two, which build caches), split into the training iterations (forward,
backward, optimizer), the validation round, and the rest (waiting for data, handlers, checkpoints).
``--before REV`` runs the same measurement on the package and configs of git revision REV in turns with this
checkout's (``before_after.py``), for a before/after figure from one run. Target: <= 0.25 s per epoch on
2 idle CPU cores.
"""

import argparse
import json
import os
import statistics

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=12)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--num_workers", type=int, default=2)
parser.add_argument("--device", default="cpu")
parser.add_argument("--clip_model", default="mediclip-tiny")
parser.add_argument("--before", metavar="REV", help="also measure git revision REV, in turns with this checkout")
parser.add_argument("--rounds", type=int, default=3, help="turns of each with --before")
parser.add_argument("--json", action="store_true", help="print the figures as one JSON line (for --before)")
args = parser.parse_args()
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import logging
import tempfile
import time

import torch

SKIPPED_EPOCHS = 2  # the first epochs fill the validation token cache and start the loader


def measure(
    epochs: int = 12, clip_model: str = "mediclip-tiny", device: str = "cpu", num_workers: int = 2, **overrides
) -> dict:
    """Per-epoch figures of a demo run (see the module docstring); ``overrides``: more train.json keys."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        workflow = ConfigWorkflow(
            config_file=os.path.join("bundle", "configs", "train.json"),
            workflow_type="train",
            bundle_root="bundle",
            demo_dir=os.path.join(tmp, "demo"),
            output_dir=os.path.join(tmp, "runs"),
            ckpt_dir=os.path.join(tmp, "models"),
            clip_model=clip_model,
            clip_pretrained="none",
            device=device,
            epochs=epochs,
            num_workers=num_workers,
            **overrides,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        marks: dict = {"iterations": 0.0, "validation": 0.0}
        epoch_times: list[dict] = []

        def mark(name):
            def handler(_):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                marks[name] = time.perf_counter()

            return handler

        def add(total, start):
            def handler(_):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                marks[total] += time.perf_counter() - marks[start]

            return handler

        def epoch_started(_):
            now = time.perf_counter()
            if "epoch" in marks:
                epoch_times.append(
                    {
                        "epoch": now - marks["epoch"],
                        "iterations": marks["iterations"],
                        "validation": marks["validation"],
                    }
                )
            marks.update(epoch=now, iterations=0.0, validation=0.0)

        trainer.add_event_handler(Events.EPOCH_STARTED, epoch_started)
        trainer.add_event_handler(Events.ITERATION_STARTED, mark("iteration"))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, add("iterations", "iteration"))
        evaluator.add_event_handler(Events.STARTED, mark("round"))
        evaluator.add_event_handler(Events.COMPLETED, add("validation", "round"))
        trainer.add_event_handler(Events.COMPLETED, epoch_started)  # closes the last epoch
        start = time.perf_counter()
        workflow.run()  # the epochs, then the bank and calibration
        marks["run"] = time.perf_counter() - start
        workflow.finalize()
    timed = epoch_times[SKIPPED_EPOCHS:] or epoch_times[-1:]
    figures = {key: statistics.median(e[key] for e in timed) for key in ("epoch", "iterations", "validation")}
    figures["rest"] = figures["epoch"] - figures["iterations"] - figures["validation"]
    figures["run"] = marks["run"]
    if device.startswith("cuda"):
        figures["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


def line(label: str, f: dict) -> str:
    return (
        f"{label}: {f['epoch']:.3f} s per epoch with its validation round = training iterations "
        f"{f['iterations']:.3f} + validation {f['validation']:.3f} + the rest {f['rest']:.3f}"
    )


def main() -> None:
    torch.set_num_threads(args.threads)
    run = {"epochs": args.epochs, "clip_model": args.clip_model, "device": args.device, "num_workers": args.num_workers}
    if args.json:
        print(json.dumps(measure(**run)))
        return
    where = f"{args.threads} CPU threads" if args.device == "cpu" else args.device
    print(
        f"{args.clip_model}, demo recipe (k = 16, batch 8), {args.num_workers} workers, {where}, median over "
        f"epochs {SKIPPED_EPOCHS + 1}-{args.epochs}"
    )
    if not args.before:
        print(line("now", measure(**run)))
        return
    from before_after import medians_in_turns

    b, n = medians_in_turns(os.path.abspath(__file__), args.before, args.rounds)
    for label, figures in ((f"before ({args.before})", b), ("now", n)):
        print(line(label, figures) + f" (median of {args.rounds} runs)")
    print(
        f"epoch: {b['epoch'] / n['epoch']:.1f}x faster; the rest (beside training and validation): "
        f"{b['rest']:.3f} -> {n['rest']:.3f} s (target <= 0.25 s per epoch on 2 idle cores)"
    )


if __name__ == "__main__":
    main()
