"""The live model.pt of the MONAI Label app and the history beside it: no trained model is lost.

``<ckpt_dir>/model.pt`` is what inference uses. Every model that the app's training makes is kept in
``<ckpt_dir>/history/`` as ``model_<time>.pt``, with a record in ``history/history.json`` (newest last): when
and how it was trained, its validation figure, whether it was made live and why. Making a model live copies
its history file over model.pt atomically; a model.pt that is in no record (placed by hand, or made before
the history existed) is first kept in the history too. The newest `HISTORY_SIZE` files are kept, the live
one always; older files are removed and their records say so. Which model to make live is the train
task's decision (``train_task.py``).

To go back to an earlier model by hand: ``cp <ckpt_dir>/history/model_<time>.pt <ckpt_dir>/model.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

from mediclip_monai.errors import MediclipError
from mediclip_monai.io.atomic import atomic_write
from mediclip_monai.io.outputs import file_digest
from mediclip_monai.networks.checkpoint import read_model_state

logger = logging.getLogger(__name__)

HISTORY_FOLDER = "history"
RECORDS_NAME = "history.json"
HISTORY_SIZE = 5


def file_version(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (modification time, inode, size); None: no file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_ino, stat.st_size


class ModelStore:
    """The live model file and its history.

    Args:
        model_path: the live ``<ckpt_dir>/model.pt``.
    """

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.folder = os.path.join(os.path.dirname(model_path), HISTORY_FOLDER)
        self.records_path = os.path.join(self.folder, RECORDS_NAME)
        self._digest: tuple[Any, str | None] = (None, None)
        self._identity: tuple[Any, dict | None] = (None, None)

    def records(self) -> list[dict]:
        """Every model kept so far, oldest first."""
        try:
            with open(self.records_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return []

    def live_digest(self) -> str | None:
        """The digest of the live model.pt (None when there is none), recomputed only when the file changes."""
        version = file_version(self.model_path)
        if version != self._digest[0]:
            self._digest = (version, file_digest(self.model_path) if version else None)
        return self._digest[1]

    def live_record(self) -> dict | None:
        """The record of the live model.pt, or None when it is in no record (or there is none)."""
        digest = self.live_digest()
        return next((r for r in reversed(self.records()) if digest and r.get("digest") == digest), None)

    def live_identity(self) -> dict | None:
        """The backbone identity recorded in the live model.pt (clip_model, clip_pretrained, the file name of
        clip_checkpoint, ...); None when there is no model.pt or it cannot be read."""
        version = file_version(self.model_path)
        if version != self._identity[0]:
            identity = None
            if version:
                try:
                    identity = dict(read_model_state(self.model_path)["_extra_state"])
                except MediclipError as error:  # unreadable: no backbone to train again
                    logger.warning(f"cannot read the backbone of the live model: {error}")
            self._identity = (version, identity)
        return self._identity[1]

    def keep(self, model_file: str, record: dict) -> dict:
        """Copy ``model_file`` into the history with ``record`` (its file and digest added); returns the record."""
        name = _unique_name(self.folder, "model_" + time.strftime("%Y%m%d_%H%M%S"))
        with atomic_write(os.path.join(self.folder, name)) as tmp:
            shutil.copyfile(model_file, tmp)
        record = {**record, "file": name, "digest": file_digest(model_file)}
        self._save_pruned([*self.records(), record])
        return record

    def make_live(self, record: dict) -> None:
        """Copy the history file of ``record`` over model.pt (atomically), keeping the model.pt it replaces."""
        digest = self.live_digest()
        if digest and not any(r.get("digest") == digest and r.get("file") for r in self.records()):
            self.keep(self.model_path, {"source": "the live model.pt, kept when another replaced it"})
        with atomic_write(self.model_path) as tmp:
            shutil.copyfile(os.path.join(self.folder, record["file"]), tmp)

    def _save_pruned(self, records: list[dict]) -> None:
        """Save ``records`` after removing the oldest files beyond `HISTORY_SIZE` (never the live model's)."""
        live = self.live_digest()
        with_file = [r for r in records if r.get("file")]
        excess = len(with_file) - HISTORY_SIZE
        for record in with_file:
            if excess <= 0:
                break
            if record["digest"] != live:
                os.remove(os.path.join(self.folder, record["file"]))
                record["file"] = None
                record["removed"] = f"only the newest {HISTORY_SIZE} models are kept"
                excess -= 1
        with atomic_write(self.records_path) as tmp:
            with open(tmp, "w") as f:
                json.dump(records, f, indent=2)


def _unique_name(folder: str, stem: str) -> str:
    name, n = f"{stem}.pt", 1
    while os.path.exists(os.path.join(folder, name)):
        name, n = f"{stem}_{n}.pt", n + 1
    return name
