"""The inference workflow's steps that are more than one expression of bundle/configs/inference.json.

The recipe itself is in the config: ``ReadImaged`` -> ``ScaleIntensityRobustd`` -> ``SliceWiseInferer`` ->
``AnomalyScored`` -> ``SaveCaseOutputsd``, run by ``engines.CaseEvaluator`` with ``handlers.CaseIndexHandler``.
Here: the plan of a run, i.e. which cases to process under which names (cases already complete in the output
folder are skipped unless ``overwrite``; in a distributed run every rank gets rank 0's plan), the identity of
the model a case was made with, and the warning for backbone keys that inference does not use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch.distributed as dist

from ..data.cases import find_cases
from ..io.atomic import require_writable
from ..io.outputs import assign_output_names, file_digest, is_complete
from ..networks import MediCLIP
from ..networks.checkpoint import require_model_file
from .engines import is_distributed

__all__ = ["model_digest", "plan_cases", "warn_unused_backbone_keys"]

logger = logging.getLogger(__name__)


def warn_unused_backbone_keys(
    network: MediCLIP, clip_model: str | None = None, clip_pretrained: str | None = None
) -> None:
    """Say so when ``--clip_model`` or ``--clip_pretrained`` name another backbone than model.pt's: inference
    always rebuilds the one the model was trained on, whatever they say."""
    for key, given in (("clip_model", clip_model), ("clip_pretrained", clip_pretrained)):
        if given is None:
            continue
        used = network.identity[key]
        if str(given) != str(used):
            logger.warning(
                f"--{key} {given} is not used: inference runs the backbone model.pt was trained on "
                f"({key} {used})"
            )


def model_digest(ckpt_path: str) -> str:
    """The digest that names model.pt in each case's manifest (``io.outputs.file_digest``); without a
    model.pt, the same "train first" error as loading it."""
    require_model_file(ckpt_path)
    return file_digest(ckpt_path)


def plan_cases(input: str, output_dir: str, overwrite: bool = False, identity: Mapping | None = None) -> list[dict]:
    """The cases an inference run processes: ``[{"image": source, "source": source, "name": name}, ...]``.

    An ``output_dir`` that cannot be written is refused first. Names follow ``data.cases`` and
    ``io.outputs.assign_output_names`` (never a name another source holds in ``output_dir``). A case whose
    folder is complete for the same source and ``identity`` (model, threshold) is left out unless
    ``overwrite``. In a distributed run rank 0 makes the plan and every rank
    receives it, so all ranks shard the same list whatever the others have written meanwhile.

    Args:
        input: a file, a DICOM series folder, a folder of inputs, or a datalist JSON (``--input``).
        output_dir: the run's output folder.
        overwrite: redo cases whose outputs are complete.
        identity: what a finished case must match to be skipped (see ``io.outputs.is_complete``).
    """
    plan = None
    require_writable(output_dir, "--output_dir")
    if not is_distributed() or dist.get_rank() == 0:
        plan = _plan(input, output_dir, overwrite, identity)
    if is_distributed():
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
        if not is_distributed():
            raise
        return error
    pending = [c for c in cases if overwrite or not is_complete(os.path.join(output_dir, c.name), c.source, identity)]
    if len(pending) < len(cases):
        logger.info(
            f"{len(cases) - len(pending)} of {len(cases)} case(s) already complete in {output_dir}: skipped "
            "(--overwrite true redoes them)"
        )
    return [{"image": c.source, "source": c.source, "name": c.name} for c in pending]
