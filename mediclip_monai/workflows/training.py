"""The training data of the bundle's training (bundle/configs/train.json ``data``): the k normal shots as
2D slices and a fixed validation set with synthetic anomalies.

Which datalist a run reads is decided in ``data.resolve``; the training batches of the whole run, seeded
per sample, come from ``data.epoch_stream``; the trainer's handlers (text features ahead of the next step,
resume, the record of the best model) are ``handlers.training``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..data.datalists import check_entries, load_datalist, sample_k_shot
from ..data.loading import load_training_slices
from ..errors import DataError
from ..transforms import DEFAULT_SYNTHESIS_TASKS, SYNTHESIS_TASKS, RandAnomalySynthesisd
from ..transforms.synthesis import normalise_task_probabilities

logger = logging.getLogger(__name__)

MAX_HELD_OUT_VALIDATION = 32


@dataclass
class FewShotData:
    """The k normal shots as 2D slices, and a fixed validation set with synthetic anomalies.

    ``train``: dicts {"image": 1 x S x S tensor in [0, 1], "name", "entry", "cache_key"}; ``support_images``:
    the same images, what CutPaste copies from; ``validation``: dicts {"image", "label", "name", "cache_key"}
    (label 1 x S x S binary; ``cache_key`` names the image for `CachedTokenInferer`); ``shot_slices``: per
    shot, the indices in ``train`` of its slices (one for a 2D shot); ``held_out``: whether the validation
    images are normals held out of the shots (False: the shot itself, when the datalist has a single
    image; such a set measures fit only, and cannot found a calibration); ``held_out_slices``: the normal
    slices held out of the shots, those of validation and of the spare training images (dicts {"image",
    "name", "entry"}, ``entry`` one per image), what the calibration set is made from
    (`mediclip_monai.data.unseen_anomalies`).
    """

    train: list[dict]
    validation: list[dict]
    support_images: list[torch.Tensor] = field(repr=False)
    shot_slices: list[list[int]] = field(default_factory=list)
    held_out: bool = True
    held_out_slices: list[dict] = field(default_factory=list, repr=False)


def _validation_split(
    datalist_path: str, training_items: list[dict], shots: list[dict], seed: int
) -> tuple[list[dict], list[dict], bool]:
    """The shots, the normal images of validation, and whether those are held out of the shots.

    Validation and calibration need normal images the model was not fitted on: the datalist's own
    ``validation`` section, else training images not drawn as shots (at most `MAX_HELD_OUT_VALIDATION`).
    When every training image is a shot, a quarter of them (at least one, drawn with ``seed``) is held out
    instead and the rest are the shots. A single image cannot be split: it validates on itself.
    """
    try:
        return shots, load_datalist(datalist_path, "validation"), True
    except DataError:
        pass
    chosen = {item["image"] for item in shots}
    rest = [item for item in training_items if item["image"] not in chosen]
    if rest:
        return shots, rest[:MAX_HELD_OUT_VALIDATION], True
    if len(shots) < 2:
        return shots, [], False
    kept = sample_k_shot(shots, len(shots) - max(1, len(shots) // 4), seed)
    kept_images = {item["image"] for item in kept}
    held_out = [item for item in shots if item["image"] not in kept_images]
    logger.warning(
        f"{datalist_path}: every training image is a shot and there is no 'validation' section; "
        f"{len(held_out)} of the {len(shots)} images are held out as normal validation images (validation and "
        f"calibration need normals the model was not fitted on), {len(kept)} are shots. Add a 'validation' "
        "section to train on all of them."
    )
    return kept, held_out, True


def make_validation_set(
    slices: list[dict], support_images: list[torch.Tensor], synthesis_tasks: dict | None, seed: int
) -> list[dict]:
    """Each held-out normal slice twice: once as it is (normal), once with a synthetic anomaly.

    Pairing keeps the set balanced, so image AUROC is always defined, and it is drawn once from ``seed``,
    so every validation round scores the same cases.
    """
    def painting(mixture: dict) -> dict:
        normalise_task_probabilities(mixture)  # an unknown task or a bad weight is named here
        return {name: p for name, p in mixture.items() if SYNTHESIS_TASKS[name].changes_image}

    # an Identity-only recipe still needs anomalous validation cases
    tasks = painting(synthesis_tasks or DEFAULT_SYNTHESIS_TASKS) or painting(DEFAULT_SYNTHESIS_TASKS)
    synthesis = RandAnomalySynthesisd(keys="image", label_key="label", tasks=tasks, support_images=support_images)
    synthesis.set_random_state(seed)
    validation = []
    for item in slices:
        image = item["image"]
        validation.append({"image": image, "label": torch.zeros_like(image), "name": item["name"]})
        anomalous = synthesis({"image": image.clone()})
        validation.append(
            {"image": anomalous["image"], "label": anomalous["label"], "name": f"{item['name']}_synthetic"}
        )
    for index, item in enumerate(validation):
        item["cache_key"] = f"validation/{index}"
    return validation


def prepare_few_shot_data(
    datalist: str,
    k_shot: int,
    seed: int,
    image_size: int | Sequence[int],
    synthesis_tasks: dict | None = None,
    interpolation: str = "bilinear",
) -> FewShotData:
    """Read the datalist, draw the k shots, check every file, and load shots and validation slices.

    Every bad entry is reported in one DataError before any training step runs: shots, validation images and
    the spare training images of calibration that are missing, unreadable or of the wrong dimensions, and every
    other training entry whose file is missing or not an image. Validation uses normal images held out of the
    shots (see `_validation_split`), never the test section. Calibration (``held_out_slices``) takes the
    validation images and, up to `MAX_HELD_OUT_VALIDATION` images in all, the training images drawn neither as
    shots nor for validation: the more normals the calibration's choices rest on, the steadier they are.
    Slices are resized to ``image_size`` by ``interpolation``: the network's input contract (train.json's
    ``clip_input``).
    """
    training_items = load_datalist(datalist, "training")
    shots = sample_k_shot(training_items, k_shot, seed)
    shots, validation_items, held_out = _validation_split(datalist, training_items, shots, seed)
    drawn = {item["image"] for item in shots + validation_items}
    spare = [item for item in training_items if item["image"] not in drawn] if held_out else []
    loaded = shots + validation_items + spare[: max(0, MAX_HELD_OUT_VALIDATION - len(validation_items))]
    read = {item["image"] for item in loaded}
    # The images not drawn are only checked to be there: reading every file of a large dataset takes long.
    check_entries(loaded, exist_only=[item for item in training_items if item["image"] not in read])
    # every bad image at once, each slice resized as the network's input contract says
    slices = load_training_slices(loaded, image_size, interpolation=interpolation)
    train = [item for item in slices if item["entry"] < len(shots)]
    for index, item in enumerate(train):  # names the slice for the token cache (CachedTokenInferer)
        item["cache_key"] = f"train/{index}"
    if not train:
        raise DataError(f"{datalist}: the {len(shots)} training images hold no slice with foreground.")
    support = [item["image"] for item in train]
    if held_out:
        end = len(shots) + len(validation_items)
        validation_slices = [item for item in slices if len(shots) <= item["entry"] < end]
    else:
        logger.warning(
            f"{datalist}: a single normal image, nothing to hold out: validating on the shot itself, which "
            "measures fit only; the model will not be calibrated"
        )
        validation_slices = train
    validation = make_validation_set(validation_slices, support, synthesis_tasks, seed + 1)
    logger.info(
        f"few-shot data: {len(shots)} shots -> {len(train)} training slices; "
        f"{len(validation_items)} held-out images -> {len(validation)} validation cases; calibration on "
        f"{len(loaded) - len(shots) if held_out else 0} held-out normal images"
    )
    shot_slices = [[i for i, item in enumerate(train) if item["entry"] == shot] for shot in range(len(shots))]
    return FewShotData(
        train=train,
        validation=validation,
        support_images=support,
        shot_slices=shot_slices,
        held_out=held_out,
        held_out_slices=[item for item in slices if item["entry"] >= len(shots)] if held_out else [],
    )
