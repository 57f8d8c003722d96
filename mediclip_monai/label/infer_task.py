"""MONAI Label inference task: the bundle's own inference recipe (``configs/inference.json``) on one study.

What runs is what ``python -m monai.bundle run --config_file bundle/configs/inference.json`` runs, read from
that file with MONAI's ``ConfigParser`` at every request, so a change of the recipe reaches MONAI Label without
a code change: its ``preprocessing`` (reading, intensity scaling), its ``inferer`` with its ``network`` (rebuilt
from model.pt), and its ``postprocessing`` (threshold, image score, slice of the maximum) without the writers of
a batch run (``SaveCaseOutputsd``): here MONAI Label's writer sends the mask. The recipe's keys are overridden
with the app's model.pt, CLIP weights and the request's options, each read into its type first
(`infer_options`; nothing a client sends reaches the recipe as text).

One request, one model: model.pt is loaded (or taken from the cache, reloaded whenever the file changes)
once, when the request starts, and that network gives the map, the thresholds, the mask and the decision,
even if training replaces model.pt meanwhile.

The label MONAI Label returns is that mask: uint8 NIfTI, value 1 = anomalous, with the study's shape and
affine. Its label name, which 3D Slicer gives the segment, carries the decision, the image score and the
thresholds. The continuous map (float32 in [0, 1], same grid) is written to a file beside it and its path
is put in the result JSON, with the image score, the thresholds, the decision, the branch and, for
volumes, the slice holding the score.

Why not monailabel's ``BundleInferTask``: it wants model.pt in ``<bundle>/models`` when the server starts
(without it the model is not listed, where this app lists it and answers "train first"), builds
``network_def`` once at start (this model.pt records which backbone to rebuild, and training replaces it),
and appends a ``Restored`` transform (``SliceWiseInferer`` already returns the study's grid). What would
be left of it is the ConfigParser calls below.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
import time
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
from mediclip_monai.io.writers import CASE_WRITERS, CaseArrays
from mediclip_monai.label import options as opt
from mediclip_monai.label.model_store import file_version
from mediclip_monai.workflows.bundle import config_files

logger = logging.getLogger(__name__)

LABEL_NAMES = {"anomaly": 1}
# The options of an infer request (and of the app's --conf); threshold and batch_size are inference.json's.
INFER_OPTIONS = ("threshold", "batch_size", "anomaly_branch", "device")
RECIPE_KEYS = ("threshold", "batch_size")
# Postprocessing transforms that write a batch run's output folder; MONAI Label writes its own result:
BATCH_WRITERS = (SaveCaseOutputsd,)
# the label it returns and the map it keeps, from the case outputs of a batch run (io.writers.CASE_WRITERS).
LABEL_OUTPUTS = ("anomaly_mask", "anomaly_map")


class StudyReadError(ValueError):
    """The study could not be read as an image (message: ``<path>: <reason>``)."""


class ModelNotTrainedError(FileNotFoundError):
    """There is no model.pt yet: train first (few-shot, on studies marked normal)."""


def infer_options(request: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The options of an infer request (or of ``--conf``), typed and checked; ``defaults`` fill the others.

    ``threshold``: anomaly probability of the segment, null: the model's calibrated one; ``batch_size``: slices
    per forward pass; ``anomaly_branch``: ``default`` (the model's) or a branch name; ``device``.

    Raises:
        OptionError: an unknown key, or a value of another type or out of range (HTTP 422).
    """
    opt.check_keys(request, INFER_OPTIONS, opt.MONAI_LABEL_INFER_KEYS)
    if "logging" in request:  # MONAI Label sets its log level from it
        opt.choice("logging", str(request["logging"]).upper(), opt.LOG_LEVELS)
    given = {**defaults, **{key: request[key] for key in INFER_OPTIONS if key in request}}
    return {
        "threshold": opt.number(
            "threshold", given["threshold"], 0, 1, "the anomaly probability of the segment", allow_null=True
        ),
        "batch_size": opt.whole_number("batch_size", given["batch_size"], 1, 4096),
        "anomaly_branch": opt.choice("anomaly_branch", given["anomaly_branch"], opt.BRANCH_CHOICES),
        "device": opt.device("device", given["device"]),
    }


def segment_name(result: Mapping[str, Any]) -> str:
    """The name 3D Slicer gives the anomaly segment: decision, image score against its threshold, mask threshold."""
    relation = ">=" if result["score"] >= result["image_threshold"] else "<"
    return (
        f"anomaly: {result['decision']} (score {result['score']:.3f} {relation} {result['image_threshold']:.3f}; "
        f"map >= {result['threshold']:.3f})"
    )


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
        device: default device ("cpu", "cuda", "cuda:1").
        clip_checkpoint: local CLIP weights, when the backbone recorded in model.pt cannot be downloaded.
        overrides: `INFER_OPTIONS` values of the app's ``--conf`` instead of inference.json's (read by
            `infer_options`); a request may set them again.
    """

    def __init__(
        self,
        bundle_dir: str,
        model_path: str,
        device: str = "cpu",
        clip_checkpoint: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.config_files = config_files("inference.json", bundle_dir)
        self.clip_checkpoint = clip_checkpoint or None
        recipe = ConfigParser.load_config_files(self.config_files)
        # The defaults of a request: the recipe's values of now for its keys (`recipe` reads the file again
        # per request, so an equal value in a request stands for the file's value then) unless --conf set them.
        defaults = {
            **{key: recipe.get(key) for key in RECIPE_KEYS},
            "anomaly_branch": opt.DEFAULT_BRANCH,
            "device": device,
        }
        overrides = dict(overrides or {})
        self._overrides = {k: v for k, v in infer_options(overrides, defaults).items() if k in overrides}
        self._defaults = {**defaults, **self._overrides}
        self._current = threading.local()  # the network of the request this thread answers
        super().__init__(
            path=model_path,
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(LABEL_NAMES),
            dimension=3,
            description="MediCLIP few-shot anomaly segment (threshold of the anomaly map) and image score",
            config=self._options_shown(),
        )

    def _options_shown(self) -> dict[str, Any]:
        """The options as MONAI Label's clients show them (3D Slicer: Options > Infer): lists are choices,
        the default first."""
        d = self._defaults
        return {
            **{key: d[key] for key in RECIPE_KEYS},
            "anomaly_branch": [d["anomaly_branch"], *(b for b in opt.BRANCH_CHOICES if b != d["anomaly_branch"])],
            "device": [d["device"], *(x for x in opt.devices() if x != d["device"])],
        }

    def is_valid(self) -> bool:
        # Listed before the first training too, so the Slicer module shows the model and its segment;
        # a request then gets a clear "train first" error (see ModelNotTrainedError).
        return True

    def __call__(self, request, callbacks=None):
        options = infer_options(request, self._defaults)
        request = {**request, **options}
        if "logging" in request:
            request["logging"] = str(request["logging"]).upper()
        self._current.network, self._current.modified = self._model(options["device"], options["anomaly_branch"])
        try:
            label, result = super().__call__(request, callbacks)
        finally:
            self._current.network = None
        result["label_names"] = {segment_name(result): LABEL_NAMES["anomaly"]}
        return label, result

    def _model(self, device: str, branch: str) -> tuple[torch.nn.Module, float]:
        """The live model on ``device`` (cached until model.pt changes) giving ``branch``, and its file's time."""
        path = self.get_path(validate=False)
        version = file_version(path)  # taken before reading: a file replaced meanwhile is read again next time
        if version is None:
            raise ModelNotTrainedError(
                f"no trained model at {path}: mark a few studies normal and run training first "
                "(MONAI Label 'Train', or POST /train/<model>)"
            )
        cached = self._networks.get(device)
        if not cached or cached[1] != version:
            if cached:
                logger.info(f"{path} changed: reloading the model")
            self._networks[device] = (parsed(self.recipe({"device": device}), "network"), version)
        network = self._networks[device][0]
        if branch != opt.DEFAULT_BRANCH:
            network = copy.copy(network)  # shares every weight with the cached network; only the branch differs
            network.anomaly_branch = branch
            network.require_branch(branch)
        return network, version[0] / 1e9

    def _get_network(self, device, data):
        return self._current.network

    def recipe(self, options: Mapping[str, Any], network: torch.nn.Module | None = None) -> ConfigParser:
        """inference.json with this app's values and the request's typed ``options``; ``network``: the
        request's network (``network_def``)."""
        parser = ConfigParser()
        parser.read_config(self.config_files)
        parser["bundle_root"] = self.bundle_dir
        parser["ckpt_path"] = self.get_path(validate=False)
        parser["clip_checkpoint"] = self.clip_checkpoint
        parser["device"] = options["device"]
        parser["run_identity"] = {}  # only the batch writers record it (and hashing model.pt takes a while)
        for key in RECIPE_KEYS:
            # a request's value equal to the default stands for the file's value of now, unless --conf set it
            if key in options and (key in self._overrides or options[key] != self._defaults[key]):
                parser[key] = options[key]
        if network is not None:
            parser["network_def"] = network
        return parser

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return list(parsed(self.recipe(data), "preprocessing"))

    def run_pre_transforms(self, data: dict[str, Any], transforms):
        try:
            return super().run_pre_transforms(data, transforms)
        except DataError as error:  # the study's own problem (HTTP 422), told apart from the model's
            raise StudyReadError(str(error)) from error

    def inferer(self, data=None) -> Inferer:
        return parsed(self.recipe(data), "inferer")

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # the decision threshold may come from model.pt: the request's own network
        post = parsed(self.recipe(data, self._current.network), "postprocessing")
        return [t for t in post.transforms if not isinstance(t, BATCH_WRITERS)]

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str, dict]:
        """Mask and map as temporary files, written by the case outputs of a batch run (``io.writers.CASE_WRITERS``:
        ``anomaly_mask``, ``anomaly_map``); MONAI Label sends the mask and deletes it, the app moves the map to
        where it is kept (see ``MediCLIPApp.infer``)."""
        affine = np.asarray(data["image"].affine.cpu(), dtype=np.float64)
        mask = np.asarray(data["mask"][0].cpu(), dtype=np.uint8)
        anomaly_map = np.asarray(data[self.output_label_key][0].cpu(), dtype=np.float32)
        case = CaseArrays(str(data.get("image_path", "")), anomaly_map, mask, affine)
        mask_path, map_path = (_write_output(output, case) for output in LABEL_OUTPUTS)
        result = {key: data[key] for key in ("score", "max_slice", "threshold", "image_threshold", "decision")}
        result["anomaly_branch"] = self._current.network.anomaly_branch
        result["model_modified"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._current.modified))
        result["anomaly_map"] = map_path
        result["anomalous_voxels"] = int(mask.sum())
        return mask_path, result


def _write_output(output: str, case: CaseArrays) -> str:
    """The case output ``output`` written to a temporary file; its path."""
    writer = CASE_WRITERS[output]
    handle, path = tempfile.mkstemp(prefix="mediclip_", suffix=writer.suffix)
    os.close(handle)
    writer.write(path, case)
    return path
