"""Glue between the inference bundle config (bundle/configs/inference.json) and the package.

The recipe itself is in the config: ``ReadImaged`` -> ``ScaleIntensityRobustd`` -> ``SliceWiseInferer`` ->
``AnomalyScored`` -> ``SaveCaseOutputsd``, run by ``engines.CaseEvaluator`` with ``handlers.CaseIndexHandler``.
What is more than one expression lives here: loading the trained network from model.pt, and the plan of a
run, i.e. which cases to process under which names (cases already complete in the output folder are
skipped unless ``overwrite``; in a distributed run every rank gets rank 0's plan).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

from .data.cases import find_cases
from .io.outputs import assign_output_names, is_complete
from .networks import MediCLIP

__all__ = ["load_checkpoint_state", "load_trained_model", "plan_cases"]

logger = logging.getLogger(__name__)


def load_checkpoint_state(ckpt_path: str) -> dict:
    """The trainable state dict of a checkpoint (model.pt, or a resume checkpoint holding 'model')."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"{ckpt_path}: no trained model here; train first (see README) or set --ckpt_dir.")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "_extra_state" not in state and isinstance(state.get("model"), dict):
        state = state["model"]
    if "_extra_state" not in state:
        raise ValueError(f"{ckpt_path}: not a MediCLIP checkpoint (no backbone identity inside).")
    return state


def load_trained_model(ckpt_path: str, device: str = "cpu", clip_checkpoint: str | None = None) -> MediCLIP:
    """Rebuild the network recorded in ``ckpt_path`` and load its trained adapters and prompts.

    Args:
        ckpt_path: model.pt written by training.
        device: where the network goes.
        clip_checkpoint: local CLIP weights file, when the recorded pretrained tag cannot be downloaded.
    """
    state = load_checkpoint_state(ckpt_path)
    identity = state["_extra_state"]
    network = MediCLIP(
        clip_model=identity["clip_model"],
        clip_pretrained=identity["clip_pretrained"],
        clip_checkpoint=clip_checkpoint or None,
        feature_layers=identity["feature_layers"],
        causal_text_mask=identity["causal_text_mask"],
    )
    network.trainable.load_state_dict(state)
    return network.to(device).eval()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def plan_cases(input: str, output_dir: str, overwrite: bool = False, identity: Mapping | None = None) -> list[dict]:
    """The cases an inference run processes: ``[{"image": source, "source": source, "name": name}, ...]``.

    Names follow ``data.cases`` and ``io.outputs.assign_output_names`` (never a name another source holds
    in ``output_dir``). A case whose folder is complete for the same source and ``identity`` (model,
    threshold) is left out unless ``overwrite``. In a distributed run rank 0 makes the plan and every rank
    receives it, so all ranks shard the same list whatever the others have written meanwhile.

    Args:
        input: a file, a DICOM series folder, a folder of inputs, or a datalist JSON (``--input``).
        output_dir: the run's output folder.
        overwrite: redo cases whose outputs are complete.
        identity: what a finished case must match to be skipped (see ``io.outputs.is_complete``).
    """
    plan = None
    if not _distributed() or dist.get_rank() == 0:
        plan = _plan(input, output_dir, overwrite, identity)
    if _distributed():
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    if isinstance(plan, Exception):  # rank 0's error, raised on every rank
        raise plan
    return plan


def _plan(input: str, output_dir: str, overwrite: bool, identity: Mapping | None) -> list[dict] | Exception:
    try:
        cases = assign_output_names(find_cases(input), output_dir)
    except Exception as error:
        if not _distributed():
            raise
        return error
    pending = [c for c in cases if overwrite or not is_complete(os.path.join(output_dir, c.name), c.source, identity)]
    if len(pending) < len(cases):
        logger.info(
            f"{len(cases) - len(pending)} of {len(cases)} case(s) already complete in {output_dir}: skipped "
            "(--overwrite true redoes them)"
        )
    return [{"image": c.source, "source": c.source, "name": c.name} for c in pending]
