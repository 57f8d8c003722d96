"""The MONAI Label app of the MediCLIP bundle, served by ``python -m mediclip_monai.label start_server``.

One model, ``mediclip_anomaly``: its infer task returns the anomaly segment (label value 1, named with the
decision, the image score and the thresholds) of a study on the study's own grid, and keeps the continuous
anomaly map beside it, in the datastore under the label tag ``anomaly_map``; its train task fine-tunes the
bundle few-shot on the studies marked normal and makes the new model live when it is not worse than the
live one (see ``train_task.py``).

App config (``--conf KEY VALUE``; every value is read into its type and checked, an unknown key refused):
    bundle_dir       the MONAI bundle (default: ``bundle/`` of this repository)
    ckpt_dir         where the live model.pt and its history are (default: ``<bundle_dir>/models``)
    output_dir       training runs and maps of uploaded images (default: ``<bundle_dir>/runs/monailabel``)
    clip_model, clip_pretrained, clip_checkpoint
                     the backbone a training may use besides the live model's (defaults: train.json's);
                     clip_checkpoint: local CLIP weights (no download), also for rebuilding the live model
    threshold        anomaly probability of the segment (default: inference.json's; null: the threshold
                     calibrated into model.pt); batch_size: slices per forward pass (inference.json's);
                     anomaly_branch: default (the model's), mediclip, memory_bank or fused
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
import sys
import urllib.parse
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
from mediclip_monai.label import options as opt
from mediclip_monai.label.infer_task import INFER_OPTIONS, AnomalyInferTask, ModelNotTrainedError, StudyReadError
from mediclip_monai.label.model_store import ModelStore
from mediclip_monai.label.train_task import Backbone, FewShotTrainTask

logger = logging.getLogger(__name__)

MODEL_NAME = "mediclip_anomaly"
ANOMALY_MAP_TAG = "anomaly_map"
DESCRIPTION = "MediCLIP few-shot anomaly segment; its name gives the decision, the image score and the thresholds"
APP_OPTIONS = (
    "bundle_dir", "ckpt_dir", "output_dir", "clip_model", "clip_pretrained", "clip_checkpoint",
    "threshold", "batch_size", "anomaly_branch", "device", "epochs", "k_shot", "seed",
)  # fmt: skip
# The ASGI app that checks train requests when they arrive (server.py); this app refuses to serve without it.
SERVER_MODULE = "mediclip_monai.label.server"
START_COMMAND = "python -m mediclip_monai.label start_server --studies DIR (scripts/run_monailabel.sh DIR)"


def default_bundle_dir() -> str:
    """``bundle/`` beside the package in a source checkout (the repository layout)."""
    return str(Path(mediclip_monai.__file__).resolve().parents[1] / "bundle")


def _version() -> str:
    try:
        return importlib.metadata.version("mediclip-monai")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _init_error(message: str) -> MONAILabelException:
    return MONAILabelException(MONAILabelError.APP_INIT_ERROR, message)


class MediCLIPApp(MONAILabelApp):
    """MONAI Label app: MediCLIP anomaly segmentation and few-shot training on normal studies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        if "monailabel.app" in sys.modules and SERVER_MODULE not in sys.modules:
            raise _init_error(
                f"serve this app with {START_COMMAND}: MONAI Label's own start_server would bind every network "
                "interface without authentication and would not check train requests"
            )
        conf = conf or {}
        try:
            self._read_conf(conf)
            self.store = ModelStore(self.model_path)
            super().__init__(
                app_dir=app_dir,
                studies=studies,
                conf=conf,
                name="MediCLIP anomaly detection",
                description="Few-shot anomaly segmentation (MediCLIP bundle): train on normal studies, review",
                version=_version(),
            )
        except opt.OptionError as error:
            raise _init_error(f"--conf {error}") from None

    def _read_conf(self, conf: dict[str, Any]) -> None:
        opt.check_keys(conf, APP_OPTIONS, opt.MONAI_LABEL_CONF_KEYS)
        self.bundle_dir = opt.path("bundle_dir", conf.get("bundle_dir") or default_bundle_dir(), "dir")
        if not os.path.isfile(os.path.join(self.bundle_dir, "configs", "train.json")):
            raise opt.OptionError("bundle_dir", f"{self.bundle_dir} is not the MediCLIP bundle (no configs/train.json)")
        self.ckpt_dir = opt.path("ckpt_dir", conf.get("ckpt_dir") or os.path.join(self.bundle_dir, "models"))
        self.output_dir = opt.path(
            "output_dir", conf.get("output_dir") or os.path.join(self.bundle_dir, "runs", "monailabel")
        )
        self.model_path = os.path.join(self.ckpt_dir, "model.pt")
        self.device = opt.device("device", conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.clip_checkpoint = (
            opt.path("clip_checkpoint", conf["clip_checkpoint"], "file") if conf.get("clip_checkpoint") else None
        )
        self.backbone = Backbone(
            *(opt.name(key, conf.get(key) or self._train_json(key)) for key in ("clip_model", "clip_pretrained")),
            self.clip_checkpoint,
        )
        # inference.json's values unless given here (a request may set them again); AnomalyInferTask reads them
        self.infer_overrides = {key: conf[key] for key in INFER_OPTIONS if key in conf and key != "device"}
        self.train_defaults = {key: conf[key] for key in ("epochs", "k_shot", "seed") if key in conf}

    def _train_json(self, key: str) -> Any:
        """A value of the bundle's train.json, the default of the backbone a training may use."""
        with open(os.path.join(self.bundle_dir, "configs", "train.json")) as f:
            return json.load(f)[key]

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
                backbone=self.backbone,
                device=self.device,
                defaults=self.train_defaults,
            )
        }

    def trainer(self, model: str) -> FewShotTrainTask | None:
        """The train task of ``model`` (None: no such model, or training is off)."""
        return self._trainers.get(model)

    def info(self):
        """MONAI Label's app info; the model's description (the tooltip 3D Slicer shows on the segmentation
        model) tells which model is live and how the last training ended."""
        meta = super().info()
        if MODEL_NAME in meta["models"]:
            meta["models"][MODEL_NAME]["description"] = f"{DESCRIPTION}. {self._status()}"
        return meta

    def _status(self) -> str:
        record = self.store.live_record()
        if not os.path.isfile(self.model_path):
            live = "No model yet: mark normal studies and Train."
        elif record and record.get("validation_pixel_auroc") is not None:
            live = (
                f"Live model: trained {record['trained']} on {record['backbone']}, {record['shots']} shot(s), "
                f"validation pixel AUROC {record['validation_pixel_auroc']:.3f}."
            )
        else:
            live = "Live model: a model.pt not trained by this app."
        trainer = self.trainer(MODEL_NAME)
        stats = trainer.stats() if trainer else {}
        if stats.get("error"):
            return f"{live} Last training ({stats.get('failed')}) FAILED: {stats['error']}"
        if stats.get("outcome"):
            return f"{live} Last training ({stats.get('finished')}): {stats['outcome']}."
        return live

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Run the anomaly inference; errors a client can act on become HTTP errors with a clear reason:
        422 an option it does not accept or an unreadable study, 404 unknown study, 409 no trained model yet,
        400 any other error whose message says what to fix (a model.pt that is not a MediCLIP model, a branch
        the model cannot give)."""
        datastore = datastore or self.datastore()
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise HTTPException(status_code=422, detail="image: give the id of a study (GET /datastore/ lists them)")
        study_id = image if not os.path.exists(image) else None
        if study_id is not None and not datastore.get_image_uri(study_id):
            raise HTTPException(
                status_code=404, detail=f"no study {study_id[:80]!r} in the datastore (GET /datastore/ lists them)"
            )
        try:
            result = super().infer(request, datastore)
        except opt.OptionError as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
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
            if study_id and isinstance(datastore, LocalDatastore):
                params["anomaly_map_tag"] = ANOMALY_MAP_TAG
                query = urllib.parse.urlencode({"label": study_id, "tag": ANOMALY_MAP_TAG})
                params["anomaly_map_url"] = f"/datastore/label?{query}"  # on the server Slicer is connected to
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
                    "decision": params.get("decision"),
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
