"""The MONAI Label app of the MediCLIP bundle (``monailabel start_server --app <this folder>``).

One model, ``mediclip_anomaly``: its infer task returns the anomaly segment (label ``anomaly`` = 1) of
a study on the study's own grid, and keeps the continuous anomaly map beside it, in the datastore under
the label tag ``anomaly_map`` (path and image score in the result JSON); its train task fine-tunes the
bundle few-shot on the studies marked normal and makes the new model.pt live.

App config (``--conf KEY VALUE``):
    bundle_dir       the MONAI bundle (default: ``bundle/`` of this repository)
    ckpt_dir         where the live model.pt is (default: ``<bundle_dir>/models``)
    output_dir       training runs and maps of uploaded images (default: ``<bundle_dir>/runs/monailabel``)
    clip_model, clip_pretrained, clip_checkpoint
                     backbone of training (defaults: train.json's); inference reads it from model.pt
    threshold        anomaly probability of the segment (default: inference.json's; null: the threshold
                     calibrated into model.pt); batch_size: slices per forward pass (inference.json's)
    device           "cpu", "cuda", "cuda:1" (default: cuda when available)
    epochs, k_shot, seed
                     training defaults shown in the client (default 20, 8, 0)
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

import mediclip_monai
from mediclip_monai.errors import MediclipError
from mediclip_monai.label.infer_task import REQUEST_KEYS, AnomalyInferTask, ModelNotTrainedError, StudyReadError
from mediclip_monai.label.train_task import FewShotTrainTask

logger = logging.getLogger(__name__)

MODEL_NAME = "mediclip_anomaly"
ANOMALY_MAP_TAG = "anomaly_map"


def default_bundle_dir() -> str:
    """``bundle/`` beside the package in a source checkout (the repository layout)."""
    return str(Path(mediclip_monai.__file__).resolve().parents[1] / "bundle")


def _train_config_value(bundle_dir: str, key: str, fallback: str) -> str:
    """A plain (non-expression) value of train.json, so the app trains what the bundle trains by default."""
    try:
        with open(os.path.join(bundle_dir, "configs", "train.json")) as f:
            value = json.load(f).get(key)
    except (OSError, ValueError):
        return fallback
    if isinstance(value, str) and value and value[0] not in "$@%":
        return value
    return fallback


def _version() -> str:
    try:
        return importlib.metadata.version("mediclip-monai")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class MediCLIPApp(MONAILabelApp):
    """MONAI Label app: MediCLIP anomaly segmentation and few-shot training on normal studies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = conf or {}
        self.bundle_dir = os.path.abspath(conf.get("bundle_dir") or default_bundle_dir())
        if not os.path.isfile(os.path.join(self.bundle_dir, "configs", "train.json")):
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"{self.bundle_dir}: not the MediCLIP bundle (no configs/train.json); pass --conf bundle_dir DIR",
            )
        self.ckpt_dir = os.path.abspath(conf.get("ckpt_dir") or os.path.join(self.bundle_dir, "models"))
        self.output_dir = os.path.abspath(conf.get("output_dir") or os.path.join(self.bundle_dir, "runs", "monailabel"))
        self.model_path = os.path.join(self.ckpt_dir, "model.pt")
        self.device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        # inference.json's values unless given here (a request may override them again)
        self.infer_overrides = {key: conf[key] for key in REQUEST_KEYS if key in conf}
        self.clip_model = conf.get("clip_model") or _train_config_value(self.bundle_dir, "clip_model", "ViT-L-14")
        self.clip_pretrained = conf.get("clip_pretrained") or _train_config_value(
            self.bundle_dir, "clip_pretrained", "openai"
        )
        self.clip_checkpoint = conf.get("clip_checkpoint") or None
        self.train_defaults = {
            "epochs": int(conf.get("epochs", 20)),
            "k_shot": int(conf.get("k_shot", 8)),
            "seed": int(conf.get("seed", 0)),
        }
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MediCLIP anomaly detection",
            description="Few-shot anomaly segmentation (MediCLIP bundle): train on normal studies, review anomalies",
            version=_version(),
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {
            MODEL_NAME: AnomalyInferTask(
                bundle_dir=self.bundle_dir,
                model_path=self.model_path,
                device=self.device,
                clip_checkpoint=self.clip_checkpoint,
                overrides=self.infer_overrides,
            )
        }

    def init_trainers(self) -> dict[str, TrainTask]:
        return {
            MODEL_NAME: FewShotTrainTask(
                bundle_dir=self.bundle_dir,
                model_path=self.model_path,
                output_dir=self.output_dir,
                clip_model=self.clip_model,
                clip_pretrained=self.clip_pretrained,
                clip_checkpoint=self.clip_checkpoint,
                device=self.device,
                **self.train_defaults,
            )
        }

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Run the anomaly inference; errors a client can act on become HTTP errors with a clear reason:
        404 unknown study, 422 unreadable study, 409 no trained model yet, 400 any other error whose message
        says what to fix (a model.pt that is not a MediCLIP model, a threshold that is not a probability)."""
        datastore = datastore or self.datastore()
        image = request.get("image")
        study_id = image if isinstance(image, str) and image and not os.path.exists(image) else None
        if study_id is not None and not datastore.get_image_uri(study_id):
            raise HTTPException(
                status_code=404, detail=f"no study '{study_id}' in the datastore (GET /datastore/ lists them)"
            )
        try:
            result = super().infer(request, datastore)
        except StudyReadError as error:
            raise HTTPException(status_code=422, detail=f"cannot read study '{image}': {error}") from error
        except ModelNotTrainedError as error:
            raise HTTPException(status_code=409, detail=str(error)) from error
        except MONAILabelException as error:
            raise HTTPException(status_code=400, detail=error.msg) from error
        except MediclipError as error:
            raise HTTPException(status_code=400, detail=str(error)) from error

        params = result.get("params") or {}
        if params.get("anomaly_map"):
            params["anomaly_map"] = self._keep_anomaly_map(params["anomaly_map"], study_id, datastore, params)
            params["anomaly_map_tag"] = ANOMALY_MAP_TAG if study_id and isinstance(datastore, LocalDatastore) else None
        return result

    def _keep_anomaly_map(self, temporary: str, study_id: str | None, datastore, params: dict) -> str:
        """Move the map from its temporary file to where it is kept; return that path.

        A study of the local datastore keeps it as its label tagged ``anomaly_map`` (so it is listed and
        downloadable: ``GET /datastore/label?label=ID&tag=anomaly_map``); an uploaded image's map goes
        to ``<output_dir>/anomaly_maps/``.
        """
        try:
            if study_id and isinstance(datastore, LocalDatastore):
                info = {
                    "score": params.get("score"),
                    "max_slice": params.get("max_slice"),
                    "model": MODEL_NAME,
                }
                datastore.save_label(study_id, temporary, ANOMALY_MAP_TAG, info)
                return datastore.get_label_uri(study_id, ANOMALY_MAP_TAG)
            folder = os.path.join(self.output_dir, "anomaly_maps")
            os.makedirs(folder, exist_ok=True)
            destination = os.path.join(folder, os.path.basename(temporary))
            shutil.move(temporary, destination)
            return destination
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
