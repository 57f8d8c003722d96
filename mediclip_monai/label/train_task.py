"""MONAI Label training task: few-shot MediCLIP training on the studies the user marked normal.

No pixel labels are needed. A study counts as normal when either

- its image info says so: ``{"normal": true}`` (``PUT /datastore/image/info?image=ID`` with form field
  ``info``; ``{"normal": false}`` excludes it whatever its label), or
- it has a submitted label (tag ``final``, what 3D Slicer's "Submit Label" sends) with no anomaly
  voxel: the reviewer looked, found nothing (or erased the proposed segment) and submitted.

A submitted label with any anomaly voxel marks the study abnormal; studies never reviewed are left out.

The task writes a datalist of those studies and runs the bundle's own training
(``bundle/configs/train.json``, run id ``training``) in-process, with the app's device, into a fresh
run folder; only when that run wrote its model.pt is it copied over the live ``<ckpt_dir>/model.pt``
(atomically), which the inference task reloads on its next request. MONAI Label already runs a
training request in its own process, so the server keeps serving meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import name_to_device

from mediclip_monai.data.loading import read_image
from mediclip_monai.errors import DataError

logger = logging.getLogger(__name__)

NORMAL_INFO_KEY = "normal"
STATS_NAME = "monailabel_train_stats.json"


class TrainingError(RuntimeError):
    """Training could not run or produced no model; the message says why (shown in the client's task log)."""


def _is_true(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def label_is_empty(path: str) -> bool:
    """True when the label file at ``path`` holds no non-zero voxel."""
    try:
        return not bool(np.any(np.asarray(read_image(path))))
    except DataError as error:
        logger.warning(f"ignoring unreadable label {error}")
        return False


def normal_studies(datastore: Datastore) -> list[str]:
    """Image paths of the studies marked normal (see the module docstring for the two ways)."""
    paths = []
    for image_id in sorted(datastore.list_images()):
        flag = datastore.get_image_info(image_id).get(NORMAL_INFO_KEY)
        if flag is not None:
            normal = _is_true(flag)
        else:
            label_id = datastore.get_labels_by_image_id(image_id).get(DefaultLabelTag.FINAL)
            normal = bool(label_id) and label_is_empty(datastore.get_label_uri(label_id, DefaultLabelTag.FINAL))
        if normal:
            paths.append(datastore.get_image_uri(image_id))
    return paths


class FewShotTrainTask(TrainTask):
    """Few-shot training of the bundle on the studies marked normal, then publishing the new model.pt.

    Args:
        bundle_dir: the MONAI bundle (``configs/train.json`` inside).
        model_path: the live model file the inference task reads (``<ckpt_dir>/model.pt``).
        output_dir: where each training run gets its folder (datalist, checkpoints, TensorBoard logs).
        clip_model, clip_pretrained, clip_checkpoint: the CLIP backbone to fine-tune (train.json keys).
        device: training device ("cpu", "cuda"); a request's ``device`` wins.
        epochs, k_shot, seed: defaults of the run, shown in the client and overridable per request;
            k_shot is capped at the number of normal studies.
    """

    def __init__(
        self,
        bundle_dir: str,
        model_path: str,
        output_dir: str,
        clip_model: str,
        clip_pretrained: str,
        clip_checkpoint: str | None,
        device: str,
        epochs: int = 20,
        k_shot: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__("MediCLIP few-shot training on the studies marked normal (no pixel labels needed)")
        self.bundle_dir = bundle_dir
        self.model_path = model_path
        self.output_dir = output_dir
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.clip_checkpoint = clip_checkpoint or None
        self.device = device
        self.defaults = {"epochs": int(epochs), "k_shot": int(k_shot), "seed": int(seed)}

    def config(self) -> dict[str, Any]:
        return {**self.defaults, "device": self.device}

    def stats(self) -> dict[str, Any]:
        path = os.path.join(self.output_dir, STATS_NAME)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        studies = normal_studies(datastore)
        if not studies:
            raise TrainingError(
                "no study is marked normal: submit an empty label for a few normal studies (3D Slicer: "
                "'Submit Label' with an empty anomaly segment), or set image info {'normal': true}"
            )
        epochs = int(request.get("epochs", self.defaults["epochs"]))
        k_shot = min(int(request.get("k_shot", self.defaults["k_shot"])), len(studies))
        seed = int(request.get("seed", self.defaults["seed"]))
        # a device name, a GPU's display name or a list of them, as MONAI Label's clients send it
        device = name_to_device(request.get("device") or self.device)

        run_dir = os.path.join(self.output_dir, time.strftime("train_%Y%m%d_%H%M%S"))
        run_dir = _unique(run_dir)
        os.makedirs(run_dir)
        datalist = os.path.join(run_dir, "datalist.json")
        with open(datalist, "w") as f:
            json.dump({"training": [{"image": path} for path in studies]}, f, indent=2)
        logger.info(f"few-shot training on {len(studies)} normal studies (k_shot={k_shot}) in {run_dir}")

        run_ckpt_dir = os.path.join(run_dir, "models")
        self._run_bundle_training(
            bundle_root=self.bundle_dir,
            datalist=datalist,
            ckpt_dir=run_ckpt_dir,
            output_dir=run_dir,
            device=device,
            epochs=epochs,
            k_shot=k_shot,
            seed=seed,
            clip_model=self.clip_model,
            clip_pretrained=self.clip_pretrained,
            clip_checkpoint=self.clip_checkpoint,
        )
        trained = os.path.join(run_ckpt_dir, "model.pt")
        if not os.path.isfile(trained):
            raise TrainingError(f"bundle training wrote no {trained}")
        _publish(trained, self.model_path)

        stats = {
            "model": self.model_path,
            "run_dir": run_dir,
            "normal_studies": len(studies),
            "k_shot": k_shot,
            "epochs": epochs,
            "device": device,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(os.path.join(self.output_dir, STATS_NAME), "w") as f:
            json.dump(stats, f, indent=2)
        logger.info(f"new model live: {self.model_path}")
        return stats

    def _run_bundle_training(self, **overrides: Any) -> None:
        """``python -m monai.bundle run training --config_file <bundle>/configs/train.json --key value ...``"""
        from monai.bundle import run

        configs = os.path.join(self.bundle_dir, "configs")
        try:
            run(
                "training",
                config_file=os.path.join(configs, "train.json"),
                meta_file=os.path.join(configs, "metadata.json"),
                logging_file=os.path.join(configs, "logging.conf"),
                **overrides,
            )
        except Exception as error:
            # MONAI's config resolver wraps the real cause in "Failed to evaluate ..." layers; MONAI Label
            # shows the client only the last lines of the task's output, so end with the cause itself.
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise TrainingError(f"bundle training failed: {type(cause).__name__}: {cause}") from error


def _unique(path: str) -> str:
    candidate, n = path, 1
    while os.path.exists(candidate):
        candidate, n = f"{path}_{n}", n + 1
    return candidate


def _publish(source: str, destination: str) -> None:
    """Copy ``source`` over ``destination`` atomically: a reader sees the old file or the new one, whole."""
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    partial = f"{destination}.partial"
    shutil.copyfile(source, partial)
    os.replace(partial, destination)
