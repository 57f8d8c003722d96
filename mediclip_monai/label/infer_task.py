"""MONAI Label inference task: the bundle's own inference recipe (``configs/inference.json``) on one study.

What runs is what ``python -m monai.bundle run --config_file bundle/configs/inference.json`` runs, read
from that file with MONAI's ``ConfigParser`` at every request, so a change of the recipe reaches MONAI
Label without a code change: its ``preprocessing`` (reading, intensity scaling), its ``inferer`` with its
``network`` (rebuilt from model.pt), and its ``postprocessing`` (threshold, image score, slice of the
maximum) without the writers of a batch run (``SaveCaseOutputsd``): here MONAI Label's writer sends the
mask. The recipe's keys are overridden with the app's model.pt, CLIP weights and device and, from the app
config or the request, ``threshold`` and ``batch_size``; ``threshold`` null means the threshold
calibrated into model.pt, as in inference.json.

The label MONAI Label returns (and 3D Slicer shows as the segment "anomaly") is that mask: uint8 NIfTI,
value 1 = anomalous, with the study's shape and affine. The continuous map (float32 in [0, 1], same grid)
is written to a file beside it and its path is put in the result JSON, with the image score, the
threshold, the decision and, for volumes, the slice holding the maximum. The network is reloaded
whenever model.pt changes, so a newly trained or uploaded model is live for the next request.

Why not monailabel's ``BundleInferTask``: it wants model.pt in ``<bundle>/models`` when the server starts
(without it the model is not listed, where this app lists it and answers "train first"), builds
``network_def`` once at start (this model.pt records which backbone to rebuild, and training replaces it),
and appends a ``Restored`` transform (``SliceWiseInferer`` already returns the study's grid). What would
be left of it is the ConfigParser calls below.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from mediclip_monai.errors import ConfigValueError, DataError, MediclipError, reason_of
from mediclip_monai.io.outputs import SaveCaseOutputsd
from mediclip_monai.io.writers import write_anomaly_map, write_anomaly_mask

logger = logging.getLogger(__name__)

LABEL_NAMES = {"anomaly": 1}
# inference.json keys that the app config (--conf) and each request may set.
REQUEST_KEYS = ("threshold", "batch_size")
# Postprocessing transforms that write a batch run's output folder; MONAI Label writes its own result.
BATCH_WRITERS = (SaveCaseOutputsd,)


class StudyReadError(ValueError):
    """The study could not be read as an image (message: ``<path>: <reason>``)."""


class ModelNotTrainedError(FileNotFoundError):
    """There is no model.pt yet: train first (few-shot, on studies marked normal)."""


def request_value(key: str, value: Any) -> Any:
    """An app-config or request value of a `REQUEST_KEYS` key, as inference.json takes it.

    MONAI Label sends strings: ``"0.4"`` -> 0.4; ``"null"``, ``"none"`` or empty -> None (``threshold``:
    the calibrated one).

    Raises:
        ConfigValueError: not a number.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    try:
        return int(value) if key == "batch_size" else float(value)
    except (TypeError, ValueError):
        raise ConfigValueError(f"{key}: {value!r} is not a number") from None


def parsed(parser: ConfigParser, key: str) -> Any:
    """``parser.get_parsed_content(key)`` raising the reason itself, not MONAI's "Failed to evaluate" wrapper.

    A ValueError while building the recipe comes from a value (e.g. ``threshold`` null for a model.pt
    without calibration): it becomes a `ConfigValueError`, which the app answers with HTTP 400.
    """
    try:
        return parser.get_parsed_content(key)
    except Exception as error:
        reason, _ = reason_of(error)
        if isinstance(reason, MediclipError):
            raise reason from error
        if isinstance(reason, ValueError):
            raise ConfigValueError(str(reason)) from error
        raise


class AnomalyInferTask(BasicInferTask):
    """Anomaly segmentation of a study by the bundle's inference recipe.

    Args:
        bundle_dir: the MONAI bundle (``configs/inference.json`` inside).
        model_path: the live ``<ckpt_dir>/model.pt`` (written by training, reloaded when it changes).
        device: default device of inference ("cpu", "cuda", "cuda:1"); a request's ``device`` wins.
        clip_checkpoint: local CLIP weights, when the backbone recorded in model.pt cannot be downloaded.
        overrides: values of `REQUEST_KEYS` instead of inference.json's (a request may override them again),
            as `request_value` reads them.
    """

    def __init__(
        self,
        bundle_dir: str,
        model_path: str,
        device: str | None = None,
        clip_checkpoint: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.config_file = os.path.join(bundle_dir, "configs", "inference.json")
        self.clip_checkpoint = clip_checkpoint or None
        recipe = ConfigParser.load_config_file(self.config_file)
        self._overrides = {key: request_value(key, value) for key, value in (overrides or {}).items()}
        # Shown in Slicer's options with the recipe's values of now; `recipe` reads the file again per request.
        config: dict[str, Any] = {key: self._overrides.get(key, recipe.get(key)) for key in REQUEST_KEYS}
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

    def is_valid(self) -> bool:
        # Listed before the first training too, so the Slicer module shows the model and its segment;
        # a request then gets a clear "train first" error (see ModelNotTrainedError).
        return True

    def recipe(self, data: Mapping[str, Any], network: torch.nn.Module | None = None) -> ConfigParser:
        """inference.json with this app's and this request's values; ``network``: the loaded ``network_def``."""
        parser = ConfigParser()
        parser.read_config(self.config_file)
        parser["bundle_root"] = self.bundle_dir
        parser["ckpt_path"] = self.get_path(validate=False)
        parser["clip_checkpoint"] = self.clip_checkpoint
        parser["device"] = str(data.get("device") or "cpu")
        parser["run_identity"] = {}  # only the batch writers record it (and hashing model.pt takes a while)
        for key in REQUEST_KEYS:
            # MONAI Label fills every request with the task's startup config: a value equal to it stands for
            # the file's value of now, unless the app's override set it.
            value = request_value(key, data[key]) if key in data else None
            if key in data and (key in self._overrides or value != self._config.get(key)):
                parser[key] = value
        if network is not None:
            parser["network_def"] = network
        return parser

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return list(parsed(self.recipe(data), "preprocessing").transforms)

    def run_pre_transforms(self, data: dict[str, Any], transforms):
        try:
            return super().run_pre_transforms(data, transforms)
        except DataError as error:  # the study's own problem (HTTP 422), told apart from the model's
            raise StudyReadError(str(error)) from error

    def inferer(self, data=None) -> Inferer:
        return parsed(self.recipe(data), "inferer")

    def post_transforms(self, data=None) -> Sequence[Callable]:
        network = self._get_network(data["device"], data)  # the decision threshold may come from model.pt
        post = parsed(self.recipe(data, network), "postprocessing")
        return [t for t in post.transforms if not isinstance(t, BATCH_WRITERS)]

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
        network = parsed(self.recipe({**data, "device": device}), "network")
        self._networks[device] = (network, version)
        return network

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str, dict]:
        """Mask and map as NIfTI temporary files; MONAI Label sends the mask and deletes it, the app
        moves the map to where it is kept (see ``MediCLIPApp.infer``)."""
        affine = np.asarray(data["image"].affine.cpu(), dtype=np.float64)
        mask = np.asarray(data["mask"][0].cpu(), dtype=np.uint8)
        mask_path = _temporary_path("_anomaly_mask.nii.gz")
        map_path = _temporary_path("_anomaly_map.nii.gz")
        write_anomaly_mask(mask_path, mask, affine)
        write_anomaly_map(map_path, np.asarray(data[self.output_label_key][0].cpu(), dtype=np.float32), affine)
        result = {key: data[key] for key in ("score", "max_slice", "threshold", "image_threshold", "decision")}
        result["anomaly_map"] = map_path
        result["anomalous_voxels"] = int(mask.sum())
        return mask_path, result


def _temporary_path(suffix: str) -> str:
    handle, path = tempfile.mkstemp(prefix="mediclip_", suffix=suffix)
    os.close(handle)
    return path
