"""MONAI Label inference task: the MediCLIP anomaly segment of one study, on the study's own grid.

The label MONAI Label returns (and 3D Slicer shows as the segment "anomaly") is the anomaly map
thresholded at ``threshold``: uint8 NIfTI, value 1 = anomalous, with the study's shape and affine.
The continuous map (float32 in [0, 1], same grid) is written to a file beside it and its path is put
in the result JSON, with the image score (the map's maximum) and, for volumes, the slice holding it.

The network is rebuilt from ``model.pt`` (the backbone is recorded inside it) and reloaded whenever
that file changes, so a newly trained or uploaded model is live for the next request.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from mediclip_monai.data.loading import read_image
from mediclip_monai.errors import DataError
from mediclip_monai.inference import load_trained_model
from mediclip_monai.inferers import SliceWiseInferer
from mediclip_monai.io.writers import write_anomaly_map, write_anomaly_mask
from mediclip_monai.transforms import AnomalyScored, ScaleIntensityRobustd

logger = logging.getLogger(__name__)

LABEL_NAMES = {"anomaly": 1}


class StudyReadError(ValueError):
    """The study could not be read as an image (message: ``<path>: <reason>``)."""


class ModelNotTrainedError(FileNotFoundError):
    """There is no model.pt yet: train first (few-shot, on studies marked normal)."""


class ReadStudyd:
    """Read ``data["image"]`` (a path: NIfTI, DICOM series folder, NRRD, 2D picture) as a
    channel-first MetaTensor (1, H, W[, D]) in the study's own grid, with its RAS affine."""

    def __call__(self, data: dict) -> dict:
        path = data.get("image")
        if not isinstance(path, str) or not path:
            raise StudyReadError(f"{path!r}: no study path to read")
        try:
            data["image"] = read_image(path)
        except DataError as error:
            raise StudyReadError(str(error)) from error
        return data


class AnomalyInferTask(BasicInferTask):
    """Anomaly segmentation of a study with the trained MediCLIP bundle.

    Args:
        model_path: the bundle's ``<ckpt_dir>/model.pt`` (written by training, read at each request
            when it changed).
        threshold: anomaly probability at and above which a voxel belongs to the segment (a request
            may override it with the ``threshold`` param).
        device: default device of inference ("cpu", "cuda", "cuda:1"); a request's ``device`` wins.
        clip_checkpoint: local CLIP weights, when the backbone recorded in model.pt cannot be downloaded.
        batch_size: slices per forward pass.
    """

    def __init__(
        self,
        model_path: str,
        threshold: float = 0.5,
        device: str | None = None,
        clip_checkpoint: str | None = None,
        batch_size: int = 8,
    ) -> None:
        config: dict[str, Any] = {"threshold": float(threshold), "batch_size": int(batch_size)}
        if device:
            config["device"] = [device]
        super().__init__(
            path=model_path,
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(LABEL_NAMES),
            dimension=3,
            description="MediCLIP few-shot anomaly segment (threshold of the anomaly map) and image score",
            config=config,
        )
        self.clip_checkpoint = clip_checkpoint or None

    def is_valid(self) -> bool:
        # Listed before the first training too, so the Slicer module shows the model and its segment;
        # a request then gets a clear "train first" error (see ModelNotTrainedError).
        return True

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [ReadStudyd(), ScaleIntensityRobustd(keys="image")]

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def _get_network(self, device, data):
        path = self.get_path(validate=False)
        if not path or not os.path.isfile(path):
            raise ModelNotTrainedError(
                f"no trained model at {path}: mark a few studies normal and run training first "
                "(MONAI Label 'Train', or POST /train/<model>)"
            )
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        cached = self._networks.get(device)
        if cached and cached[1] == version:
            return cached[0]
        if cached:
            logger.info(f"{path} changed: reloading the model")
        network = load_trained_model(path, device=device, clip_checkpoint=self.clip_checkpoint)
        self._networks[device] = (network, version)
        return network

    def run_inferer(self, data: dict[str, Any], convert_to_batch=True, device="cpu"):
        network = self._get_network(device, data)
        threshold = float(data.get("threshold", self._config["threshold"]))
        inferer = SliceWiseInferer(batch_size=int(data.get("batch_size", 8)))
        scored = AnomalyScored(keys="pred", threshold=threshold)({"pred": inferer(data["image"][None], network)[0]})
        data["anomaly_map"] = np.asarray(scored["pred"][0].cpu(), dtype=np.float32)
        data[self.output_label_key] = np.asarray(scored["mask"][0].cpu(), dtype=np.uint8)
        data[self.output_json_key] = {k: scored[k] for k in ("score", "max_slice", "threshold")}
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str, dict]:
        """Mask and map as NIfTI temporary files; MONAI Label sends the mask and deletes it, the app
        moves the map to where it is kept (see ``MediCLIPApp.infer``)."""
        affine = np.asarray(data["image"].affine, dtype=np.float64)
        mask_path = _temporary_path("_anomaly_mask.nii.gz")
        map_path = _temporary_path("_anomaly_map.nii.gz")
        write_anomaly_mask(mask_path, data[self.output_label_key], affine)
        write_anomaly_map(map_path, data["anomaly_map"], affine)
        result = dict(data[self.output_json_key])
        result["anomaly_map"] = map_path
        result["anomalous_voxels"] = int(data[self.output_label_key].sum())
        return mask_path, result


def _temporary_path(suffix: str) -> str:
    handle, path = tempfile.mkstemp(prefix="mediclip_", suffix=suffix)
    os.close(handle)
    return path
