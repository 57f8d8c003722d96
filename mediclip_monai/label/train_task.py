"""MONAI Label training task: few-shot MediCLIP training on the studies the user marked normal.

No pixel labels are needed. A study counts as normal when either

- its image info says so: ``{"normal": true}`` (``PUT /datastore/image/info?image=ID`` with form field
  ``info``; ``{"normal": false}`` excludes it whatever its label), or
- it has a submitted label (tag ``final``, what 3D Slicer's "Submit Label" sends) with no anomaly
  voxel: the reviewer looked, found nothing (or erased the proposed segment) and submitted.

A submitted label with any anomaly voxel marks the study abnormal; studies never reviewed are left out.

A training run:

1. Its options are read and checked (`FewShotTrainTask.check_request`; the server does it when the request
   arrives, so a bad value or a training that cannot run is refused at once, see ``server.py``).
2. The normal studies are split with the seed into the k shots and held-out studies for validation, at
   least one: with fewer than two normal studies the training is refused. The split is the run's datalist.
3. The bundle's own training (``configs/train.json``, run id ``training``) runs in this process through
   MONAI's ``ConfigWorkflow``, on the chosen backbone (by default the live model's, so a server that can
   infer can also train without internet); `EpochStats` writes MONAI Label's train stats after every
   epoch, the fields 3D Slicer's progress and accuracy bars read.
4. The new model and the live one are scored on the same held-out studies (validation pixel AUROC). The
   new model is kept in the history (``model_store.py``) and made live only when it is not worse, or when
   the request says ``promote_if_worse``.

The outcome, or the reason of a failure, ends in the train stats and in the model's description, which
3D Slicer shows as the tooltip of the segmentation model. MONAI Label runs each training in a process of
its own, so the server keeps serving meanwhile.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.train.handler import prepare_stats

from mediclip_monai.data.loading import read_image
from mediclip_monai.errors import DataError, MediclipError, reason_of
from mediclip_monai.io.atomic import atomic_write
from mediclip_monai.label import options as opt
from mediclip_monai.label.model_store import ModelStore
from mediclip_monai.workflows.bundle import config_files
from mediclip_monai.workflows.training import MAX_HELD_OUT_VALIDATION

logger = logging.getLogger(__name__)

NORMAL_INFO_KEY = "normal"
STATS_NAME = "monailabel_train_stats.json"
TRAIN_OPTIONS = ("epochs", "k_shot", "seed", "device", "backbone", "promote_if_worse")
# The whole-number options: default and range (k_shot 0: all normal studies but the held-out ones).
WHOLE_NUMBER_OPTIONS = {"epochs": (20, 1, 10000), "k_shot": (8, 0, 1000), "seed": (0, 0, 2**31 - 1)}
MIN_NORMAL_STUDIES = 2  # one shot and one held out for validation


class TrainingRefused(MediclipError):
    """A training that cannot run now (too few normal studies, backbone weights missing); HTTP 409."""


class TrainingError(RuntimeError):
    """Training ran and failed; the message says why (train stats, the model's description, the task log)."""


@dataclass(frozen=True)
class Backbone:
    """A CLIP backbone to train on: open_clip model name, pretrained tag, local weights file (or None)."""

    clip_model: str
    clip_pretrained: str
    clip_checkpoint: str | None = None

    @property
    def label(self) -> str:
        """How the train options name it: ``ViT-B-16/openai``, ``ViT-L-14/clip_l14.pt`` (a weights file)."""
        weights = os.path.basename(self.clip_checkpoint) if self.clip_checkpoint else self.clip_pretrained
        return f"{self.clip_model}/{weights}"


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


def split_studies(studies: list[str], k_shot: int, seed: int) -> tuple[list[str], list[str], str]:
    """The shots and the held-out studies of a run, drawn with ``seed``; and a sentence saying how.

    ``k_shot`` 0, or more than the studies allow, takes all but one; the rest (at most
    ``MAX_HELD_OUT_VALIDATION``) is held out for validation.

    Raises:
        TrainingRefused: fewer than `MIN_NORMAL_STUDIES` normal studies.
    """
    n = len(studies)
    if n < MIN_NORMAL_STUDIES:
        raise TrainingRefused(
            f"{n} normal stud{'y' if n == 1 else 'ies'}: training needs at least {MIN_NORMAL_STUDIES}, one to "
            "train on and one held out to check the new model. Mark more normal studies: submit an empty label "
            "(3D Slicer: erase the anomaly segment, Submit Label) or set image info {'normal': true}"
        )
    k = n - 1 if k_shot == 0 else min(k_shot, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    shots = [studies[i] for i in order[:k]]
    held_out = [studies[i] for i in order[k:]][:MAX_HELD_OUT_VALIDATION]
    how = f"{n} normal studies: {k} shot(s), {len(held_out)} held out for validation"
    if k_shot and k < k_shot:
        how += f" (k_shot {k_shot} asked; at least one study is always held out)"
    return shots, held_out, how


class EpochStats:
    """Writes MONAI Label's train stats after every epoch: what its trainers write (``epoch``,
    ``total_epochs``, ``best_metric``, ``start_ts``, ``current_time``/``total_time``, ...; made by MONAI
    Label's own ``prepare_stats``) and what 3D Slicer reads from it, plus each epoch's validation figures.

    Args:
        write: called with the stats dict.
        evaluator: the validation engine (``best_metric``: its key metric, validation pixel AUROC).
        extra: fields added to every write (the run's options and split).
    """

    def __init__(self, write: Callable[[dict], None], evaluator: Engine, extra: Mapping[str, Any]) -> None:
        self.write = write
        self.evaluator = evaluator
        self.extra = dict(extra)
        self.start_ts = time.time()
        self.validation: list[dict] = []
        self.last: dict = {}

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, trainer: Engine) -> None:
        metrics = {k: float(v) for k, v in self.evaluator.state.metrics.items() if isinstance(v, numbers.Real)}
        self.validation.append({"epoch": trainer.state.epoch, **metrics})
        self.last = {**prepare_stats(self.start_ts, trainer, self.evaluator), **self.extra}
        self.write({**self.last, "validation": list(self.validation)})


class FewShotTrainTask(TrainTask):
    """Few-shot training of the bundle on the studies marked normal; the new model goes live if not worse.

    Args:
        bundle_dir: the MONAI bundle (``configs/train.json`` inside).
        model_path: the live model file the inference task reads (``<ckpt_dir>/model.pt``).
        output_dir: where each training run gets its folder (datalist, checkpoints, TensorBoard logs).
        backbone: the backbone of the server's config (``--conf clip_model/clip_pretrained/clip_checkpoint``),
            offered after the live model's.
        device: the default training device ("cpu", "cuda", "cuda:1").
        defaults: other defaults of the options (epochs, k_shot, seed; `WHOLE_NUMBER_OPTIONS` otherwise).
    """

    def __init__(
        self,
        bundle_dir: str,
        model_path: str,
        output_dir: str,
        backbone: Backbone,
        device: str,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__("MediCLIP few-shot training on the studies marked normal (no pixel labels needed)")
        self.bundle_dir = bundle_dir
        self.store = ModelStore(model_path)
        self.output_dir = output_dir
        self.backbone = backbone
        self.device = device
        self.defaults = _whole_numbers(defaults or {})
        self.stats_path = os.path.join(output_dir, STATS_NAME)

    # --- options ----------------------------------------------------------------------------------------

    def live_backbone(self) -> Backbone | None:
        """The backbone of the live model.pt, with the server's weights file when it was trained from one;
        None without a live model, or when this server lacks that file (``--conf clip_checkpoint``)."""
        identity = self.store.live_identity()
        if not identity:
            return None
        weights_file, configured = identity.get("clip_checkpoint"), self.backbone.clip_checkpoint
        if weights_file and not (configured and os.path.basename(configured) == weights_file):
            return None
        pretrained = identity.get("clip_pretrained") or "none"
        return Backbone(identity["clip_model"], pretrained, configured if weights_file else None)

    def backbones(self) -> dict[str, Backbone]:
        """The backbones a training may use, by label: the live model's first, then the server config's."""
        offered: dict[str, Backbone] = {}
        for backbone in (self.live_backbone(), self.backbone):
            if backbone:
                offered.setdefault(backbone.label, backbone)
        return offered

    def config(self) -> dict[str, Any]:
        """The options MONAI Label's clients show (3D Slicer: Options > Train); lists are choices, first the
        default."""
        other_devices = [d for d in opt.devices() if d != self.device]
        return {
            **self.defaults,
            "device": [self.device, *other_devices],
            "backbone": list(self.backbones()),
            "promote_if_worse": False,
        }

    def check_request(self, request: Mapping[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """The options of a train request, typed and checked; with ``datastore``, also that a training can run.

        Raises:
            OptionError: an unknown key, or a value of another type or out of range (HTTP 422).
            TrainingRefused: the backbone's weights are not on this server, or too few normal studies (409).
        """
        opt.check_keys(request, TRAIN_OPTIONS, opt.MONAI_LABEL_TRAIN_KEYS)
        given = {**self.defaults, "device": self.device, "promote_if_worse": False, **request}
        backbones = self.backbones()
        options = {
            **_whole_numbers(given),
            "device": opt.device("device", given["device"]),
            "backbone": opt.choice("backbone", given.get("backbone", list(backbones)), list(backbones)),
            "promote_if_worse": opt.boolean("promote_if_worse", given["promote_if_worse"]),
        }
        _check_weights(backbones[options["backbone"]])
        if datastore is not None:
            split_studies(normal_studies(datastore), options["k_shot"], options["seed"])
        return options

    # --- stats ----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _write_stats(self, stats: Mapping[str, Any]) -> None:
        with atomic_write(self.stats_path) as tmp, open(tmp, "w") as f:
            json.dump(stats, f, indent=2, default=str)

    # --- a run ------------------------------------------------------------------------------------------------

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        before = self.stats()
        try:
            options = self.check_request(request)
            return self._run(options, datastore)
        except Exception as error:
            reason = _reason(error)
            self._write_stats({**before, "error": reason, "failed": time.strftime("%Y-%m-%d %H:%M:%S")})
            raise TrainingError(f"training failed: {reason}") from error

    def _run(self, options: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        shots, held_out, split = split_studies(normal_studies(datastore), options["k_shot"], options["seed"])
        run_dir = _unique(os.path.join(self.output_dir, time.strftime("train_%Y%m%d_%H%M%S")))
        os.makedirs(run_dir)
        datalist = os.path.join(run_dir, "datalist.json")
        with open(datalist, "w") as f:
            json.dump({"training": [{"image": p} for p in shots], "validation": [{"image": p} for p in held_out]}, f)
        logger.info(f"few-shot training in {run_dir}: {split}")

        backbone = self.backbones()[options["backbone"]]
        extra = {"options": options, "split": split, "run_dir": run_dir}
        workflow, epoch_stats = self._train(backbone, options, datalist, run_dir, extra)
        trained = os.path.join(run_dir, "models", "model.pt")
        if not os.path.isfile(trained):
            raise TrainingError(f"no validation round wrote a model ({trained})")

        candidate, live, live_problem = self._scores(workflow, options["device"])
        promote, outcome = _decision(candidate, live, live_problem, options["promote_if_worse"], len(held_out))
        record = self.store.keep(
            trained,
            {
                "trained": time.strftime("%Y-%m-%d %H:%M:%S"),
                "run_dir": run_dir,
                "backbone": backbone.label,
                "shots": len(shots),
                "held_out": len(held_out),
                "epochs": options["epochs"],
                "seed": options["seed"],
                "validation_pixel_auroc": candidate,
                "live_validation_pixel_auroc": live,
                "promoted": promote,
                "outcome": outcome,
            },
        )
        if promote:
            self.store.make_live(record)
        logger.info(f"{record['file']}: {outcome}")
        stats = {
            **epoch_stats.last,
            "validation": epoch_stats.validation,
            "candidate_metric": candidate,
            "live_metric": live,
            # what 3D Slicer's accuracy bar shows: the model live now, on this run's held-out studies
            "best_metric": candidate if promote else live,
            "promoted": promote,
            "outcome": outcome,
            "history_file": os.path.join(self.store.folder, record["file"]),
            "model": self.store.model_path,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._write_stats(stats)
        return stats

    def _train(self, backbone: Backbone, options: dict, datalist: str, run_dir: str, extra: dict):
        """Run train.json's ``training`` with the stats handler on its trainer; the workflow and the handler."""
        from monai.bundle import ConfigWorkflow

        configs = os.path.join(self.bundle_dir, "configs")
        workflow = ConfigWorkflow(
            config_file=config_files("train.json", self.bundle_dir),
            meta_file=os.path.join(configs, "metadata.json"),
            logging_file=os.path.join(configs, "logging.conf"),
            run_id="training",
            workflow_type="train",
            # typed values and paths this app made, nothing a client wrote (see options.py)
            bundle_root=self.bundle_dir,
            datalist=datalist,
            ckpt_dir=os.path.join(run_dir, "models"),
            output_dir=run_dir,
            device=options["device"],
            epochs=options["epochs"],
            k_shot=0,  # the datalist's training section holds the shots drawn above
            seed=options["seed"],
            clip_model=backbone.clip_model,
            clip_pretrained=backbone.clip_pretrained,
            clip_checkpoint=backbone.clip_checkpoint,
        )
        workflow.initialize()
        parsed = workflow.parser.get_parsed_content
        epoch_stats = EpochStats(self._write_stats, parsed("validate::evaluator"), extra)
        epoch_stats.attach(parsed("train::trainer"))
        workflow.run()
        workflow.finalize()
        return workflow, epoch_stats

    def _scores(self, workflow, device: str) -> tuple[float, float | None, str | None]:
        """Validation pixel AUROC of the new model and of the live one (None, and why, when it cannot be scored)
        on the run's held-out studies and their synthetic anomalies."""
        from mediclip_monai.networks import load_mediclip

        parsed = workflow.parser.get_parsed_content
        network, token_cache = parsed("network_def"), parsed("token_cache")
        inputs = (parsed("data"), parsed("validate::preprocessing"), parsed("batch_size"), parsed("precision"))
        candidate = validation_pixel_auroc(network, *inputs, token_cache)
        if not os.path.isfile(self.store.model_path):
            return candidate, None, None
        try:
            weights_file = (self.live_backbone() or self.backbone).clip_checkpoint
            live = load_mediclip(self.store.model_path, clip_checkpoint=weights_file, device=device)
        except MediclipError as error:
            return candidate, None, str(error)
        # the frozen backbone's tokens that training kept are the live model's too when it runs the same backbone
        same = all(live.identity[k] == network.identity[k] for k in ("backbone_fingerprint", "feature_layers"))
        return candidate, validation_pixel_auroc(live, *inputs, token_cache if same else None), None


def validation_pixel_auroc(network, data, preprocessing, batch_size: int, precision, token_cache=None) -> float:
    """Pixel AUROC of the network's own (MediCLIP) map on a run's validation set: the held-out normal slices
    and their synthetic anomalies (``data``: the run's `FewShotData`)."""
    import torch

    from mediclip_monai.metrics import pixel_auroc
    from mediclip_monai.workflows.calibrate import branch_maps

    masks = torch.stack([item["label"][0] for item in data.validation])
    maps = branch_maps(network, data.validation, preprocessing, ("mediclip",), batch_size, precision, token_cache)
    return float(pixel_auroc(masks, maps["mediclip"]))


def _whole_numbers(given: Mapping[str, Any]) -> dict[str, int]:
    """The whole-number options read from ``given``, with the defaults of `WHOLE_NUMBER_OPTIONS` for the others."""
    return {
        key: opt.whole_number(key, given.get(key, default), low, high)
        for key, (default, low, high) in WHOLE_NUMBER_OPTIONS.items()
    }


def _decision(candidate: float, live: float | None, problem: str | None, forced: bool, held_out: int) -> tuple:
    """Whether the new model goes live, and the sentence that says why."""
    figures = f"validation pixel AUROC {candidate:.3f}"
    if live is None:
        before = f"the live model could not be scored ({problem})" if problem else "there was no live model"
        return True, f"made live: {figures}; {before}"
    against = f"the live model's {live:.3f} on the same {held_out} held-out stud{'y' if held_out == 1 else 'ies'}"
    if candidate >= live:
        return True, f"made live: {figures}, not worse than {against}"
    if forced:
        return True, f"made live as asked (promote_if_worse): {figures}, worse than {against}"
    return False, (
        f"not made live: {figures}, worse than {against}; kept in the model history "
        "(Train with promote_if_worse true to use it anyway)"
    )


def _check_weights(backbone: Backbone) -> None:
    """Refuse a backbone whose CLIP weights this server has neither cached nor can download, in seconds."""
    from mediclip_monai.networks.weights import download_command, resolve_weights

    try:
        resolve_weights(backbone.clip_model, backbone.clip_pretrained, backbone.clip_checkpoint)
    except MediclipError as error:
        why = str(error).split(". ")[0]  # its first sentence: the rest is the fix for the bundle's command line
        raise TrainingRefused(
            f"backbone {backbone.label}: its CLIP weights are not on this server and cannot be downloaded from "
            f"here ({why}). Choose the live model's backbone, or restart the server with "
            f"--conf clip_checkpoint FILE (made on a machine with internet access by: "
            f"{download_command(backbone.clip_model, backbone.clip_pretrained)})"
        ) from None


def _reason(error: BaseException) -> str:
    """Why a run failed, in one line: the user error under MONAI's "Failed to evaluate" wrappers, else the root
    cause."""
    cause, is_user_error = reason_of(error)
    return str(cause) if is_user_error or isinstance(cause, TrainingError) else f"{type(cause).__name__}: {cause}"


def _unique(path: str) -> str:
    candidate, n = path, 1
    while os.path.exists(candidate):
        candidate, n = f"{path}_{n}", n + 1
    return candidate
