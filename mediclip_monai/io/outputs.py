"""The output folder of inference: one folder per case, written all or none, and the run's index.

Layout of ``<output_dir>``::

    <name>/<name>_anomaly_map.nii.gz, <name>_anomaly_mask.nii.gz, <name>_anomaly.seg.nrrd,
           [<name>_anomaly_seg.dcm, <name>_anomaly_map.dcm,] <name>_case.json   (the manifest, written last)
    scores.csv, cases.json                                    (the index of every case folder)

The outputs of a case are those named in ``outputs`` (inference.json), from ``io.writers.CASE_WRITERS``.

- A case is written into a hidden staging folder (``.<name>.tmp-XXXXXXXX``) and renamed into place once
  every output and its manifest are there: a case folder is complete or absent, never half-written.
- The manifest records the case's source, score, slice of the maximum, threshold, decision, model, the
  scale of the map files (``map_scale``, see ``mediclip_monai.decisions.map_scale``) and outputs. A folder whose
  manifest names the same source, threshold and model, and whose outputs all exist, is complete: a re-run
  skips it (``overwrite`` redoes it).
- A name held on disk by another source (or by a folder without a manifest) is never reused: the case
  takes the next free name, ``<name>_2``, ``<name>_3``, ...
- ``scores.csv`` and ``cases.json`` are rebuilt from the manifests on disk at the end of every run (and
  every rank of a distributed run), under an exclusive ``flock`` on the output folder, so runs sharing a
  folder, one after the other or at the same time, end with an index listing every case folder once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform

from ..data.cases import Case
from ..decisions.map_scale import MapScale
from ..errors import ConfigValueError, OutputError, describe_failure, reason_of, writing_into
from .atomic import atomic_write
from .writers import CASE_WRITERS, CaseArrays, write_scores_csv

__all__ = [
    "DEFAULT_OUTPUTS",
    "MANIFEST_SUFFIX",
    "BackgroundWrites",
    "SaveCaseOutputsd",
    "assign_output_names",
    "file_digest",
    "is_complete",
    "read_manifest",
    "rebuild_index",
]

logger = logging.getLogger(__name__)

MANIFEST_SUFFIX = "_case.json"
SCORES_FILE = "scores.csv"
CASES_FILE = "cases.json"
RESUME_HINT = "the cases written before are complete: run the same command again to go on"
# What a case gets unless inference.json's ``outputs`` says otherwise (names of ``io.writers.CASE_WRITERS``).
DEFAULT_OUTPUTS = ("anomaly_map", "anomaly_mask", "slicer_segmentation", "dicom_seg", "parametric_map")


def file_digest(path: str | os.PathLike) -> str:
    """Short SHA-256 of a file's bytes (identifies the model.pt a case was made with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def locked(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself (no lock file is left in it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a case folder, or None when it has none (not a finished case)."""
    folder = Path(folder)
    try:
        return json.loads((folder / f"{folder.name}{MANIFEST_SUFFIX}").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: str | os.PathLike, source: str, identity: Mapping | None = None) -> bool:
    """Whether ``folder`` holds finished outputs of ``source`` made with ``identity`` (model, threshold)."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("source") != source:
        return False
    if any(manifest.get(key) != value for key, value in (identity or {}).items()):
        return False
    return all((Path(folder) / name).is_file() for name in manifest.get("outputs", []))


def _holder(output_dir: Path, name: str) -> str | None:
    """The source whose outputs hold ``<output_dir>/<name>``: None when free, "" when unknown."""
    folder = output_dir / name
    if not folder.exists():
        return None
    manifest = read_manifest(folder)
    return manifest.get("source", "") if manifest else ""


def _free_name(output_dir: Path, name: str, source: str, taken: set[str]) -> str:
    """``name``, or the first ``name_2``, ``name_3``, ... not taken and not held on disk by another source."""
    candidate, number = name, 1
    while candidate.lower() in taken or _holder(output_dir, candidate) not in (None, source):
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def assign_output_names(cases: Sequence[Case], output_dir: str | os.PathLike) -> list[Case]:
    """The cases with names that no output of another source holds in ``output_dir``.

    A case whose folder already holds its own source keeps its name (a re-run finds it); a case whose
    name is held by another source, or by a folder without a manifest, takes the next free number. The
    result is deterministic for a given folder content.
    """
    output_dir = Path(output_dir)
    taken = {case.name.lower() for case in cases}
    assigned = []
    for case in cases:
        name = case.name
        if _holder(output_dir, name) not in (None, case.source):
            taken.discard(name.lower())
            name = _free_name(output_dir, name, case.source, taken)
            taken.add(name.lower())
        assigned.append(Case(name, case.source))
    return assigned


def _commit(staging: Path, output_dir: Path, name: str, manifest: dict) -> str:
    """Rename the staged case folder into place under the folder lock; returns the name it got.

    The place is free: rename. It holds this source's older outputs: swap them out and delete them. It
    was taken meanwhile by another source (a concurrent run): the case takes the next free name.
    """
    with locked(output_dir):
        holder = _holder(output_dir, name)
        if holder not in (None, manifest["source"]):
            new_name = _free_name(output_dir, name, manifest["source"], set())
            staging = _rename_outputs(staging, name, new_name, manifest)
            name = new_name
        final = output_dir / name
        old = None
        if final.exists():
            old = output_dir / f".{name}.old-{secrets.token_hex(4)}"
            os.replace(final, old)
        os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return name


def _rename_outputs(staging: Path, old: str, new: str, manifest: dict) -> Path:
    """Rename a staged case's files (and its manifest's content) from ``old`` to ``new``."""
    outputs = []
    for file_name in manifest["outputs"]:
        renamed = new + file_name[len(old) :]
        os.replace(staging / file_name, staging / renamed)
        outputs.append(renamed)
    os.remove(staging / f"{old}{MANIFEST_SUFFIX}")
    manifest.update(name=new, outputs=outputs)
    _write_manifest(staging, new, manifest)
    return staging


def _write_manifest(folder: Path, name: str, manifest: dict) -> None:
    with atomic_write(folder / f"{name}{MANIFEST_SUFFIX}") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)


class BackgroundWrites:
    """Writes cases' outputs in worker threads while the network goes on with the next case.

    Compression and file writing release the GIL, so they overlap the next case's reading and inference. At
    most ``workers + 1`` cases wait or are being written (each holds its map and mask in memory); a further
    `submit` waits for a slot. A case whose writing failed is a failure of that case, reported by `wait` (the
    engine's end: ``handlers.CaseIndexHandler``); an output folder that is full or read-only
    (``errors.OutputError``) is no case's fault and stops the run: the next `submit`, or `wait`, raises it.

    Args:
        workers: writer threads; 0 writes in the calling thread (as a plain transform would).
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = int(workers)
        self._executor = ThreadPoolExecutor(self.workers, "case-writer") if self.workers > 0 else None
        self._slots = threading.BoundedSemaphore(self.workers + 1)
        self._pending: list[tuple[str, Future]] = []

    def submit(self, source: str, write: Callable[[], object]) -> None:
        """Run ``write`` (the outputs of the case of ``source``) in a writer thread, or now without threads."""
        self._raise_output_error(done_only=True)
        if self._executor is None:
            write()
            return
        self._slots.acquire()
        future = self._executor.submit(write)
        future.add_done_callback(lambda _: self._slots.release())
        self._pending.append((source, future))

    def wait(self) -> list[str]:
        """Wait for every write submitted; ``"<source>: <reason>"`` for each that failed."""
        self._raise_output_error(done_only=False)
        failures = [
            describe_failure(source, future.exception()) for source, future in self._pending if future.exception()
        ]
        self._pending = []
        return failures

    def _raise_output_error(self, done_only: bool) -> None:
        for _, future in self._pending:
            if done_only and not future.done():
                continue
            error = future.exception()
            if error is not None and isinstance(reason_of(error)[0], OutputError):
                self._pending = []
                raise error


class SaveCaseOutputsd(MapTransform):
    """Write one case's outputs into ``<output_dir>/<name>/``, all or none, ending with its manifest.

    Outputs (see the module docstring for the folder rules), all on the input's voxel grid (the map's
    affine): those named in ``outputs``; by default ``<name>_anomaly_map.nii.gz`` (float32, in the scale of
    ``map_scale``), ``<name>_anomaly_mask.nii.gz`` (uint8), ``<name>_anomaly.seg.nrrd`` (3D Slicer segmentation)
    and, for a DICOM series input, ``<name>_anomaly_seg.dcm`` (DICOM SEG) and ``<name>_anomaly_map.dcm`` (DICOM
    Parametric Map of the map), both referencing the series.

    Args:
        output_dir: the run's output folder.
        identity: what else makes outputs reusable by a re-run (e.g. ``{"model": digest, "threshold": t}``),
            recorded in the manifest.
        keys: the anomaly map key, ``(1, H, W[, D])`` MetaTensor.
        mask_key: the uint8 mask key (``AnomalyScored``).
        name_key, source_key: the case's name and its image file or DICOM series folder.
        writes: where the writing runs (`BackgroundWrites`, whose ``wait`` reports failures); None: now.
        outputs: the case's outputs, names of ``io.writers.CASE_WRITERS``, written in this order.
        map_scale: the scale the map files are written in (`MapScale`); None: the branch's own values.

    Raises:
        ConfigValueError: an output name that is not registered.

    The case's ``score``, ``max_slice``, ``threshold``, ``image_threshold`` and ``decision``
    (``AnomalyScored``) go into the manifest. Sets ``case_folder`` and ``name`` (the folder written and the
    name it got; with ``writes``, the one it is meant to get).
    """

    def __init__(
        self,
        output_dir: str,
        identity: Mapping | None = None,
        keys: str = "pred",
        mask_key: str = "mask",
        name_key: str = "name",
        source_key: str = "source",
        writes: BackgroundWrites | None = None,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
        map_scale: MapScale | None = None,
    ):
        super().__init__(keys)
        unknown = [name for name in outputs if name not in CASE_WRITERS]
        if unknown:
            raise ConfigValueError(f"--outputs {unknown}: not a case output; the outputs are {', '.join(CASE_WRITERS)}")
        self.output_dir = Path(output_dir)
        self.identity = dict(identity or {})
        self.mask_key, self.name_key, self.source_key = mask_key, name_key, source_key
        self.writes = writes
        self.outputs = tuple(outputs)
        self.map_scale = map_scale or MapScale()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        name, source = str(d[self.name_key]), str(d[self.source_key])
        # on the CPU now: a writer thread must not depend on the device or on the engine's tensors
        anomaly_map = np.asarray(d[self.keys[0]][0].detach().cpu(), dtype=np.float32)
        mask = np.asarray(d[self.mask_key][0].detach().cpu(), dtype=np.uint8)
        affine = np.asarray(d[self.keys[0]].affine.cpu(), dtype=np.float64)
        manifest = {
            "name": name,
            "source": source,
            "score": float(d["score"]),
            "max_slice": d.get("max_slice"),
            "threshold": float(d["threshold"]),
            "image_threshold": float(d["image_threshold"]),
            "decision": d["decision"],
            **self.map_scale.describe(),
            **self.identity,
        }
        case = CaseArrays(source, self.map_scale.written(anomaly_map), mask, affine, self.map_scale)
        write = partial(self._write, name, case, manifest)
        if self.writes is None:
            name = write()
        else:  # the name it gets is known once written (a concurrent run may take this one meanwhile)
            self.writes.submit(source, write)
        d[self.name_key], d["case_folder"] = name, str(self.output_dir / name)
        return d

    def _write(self, name: str, case: CaseArrays, manifest: dict) -> str:
        """Stage the case's outputs and manifest, then move them into place; returns the name it got.

        A full or read-only folder is no case's fault: it stops the run (``errors.OutputError``)."""
        with writing_into(f"--output_dir {self.output_dir}", f"while writing case {name}", RESUME_HINT):
            staging = self.output_dir / f".{name}.tmp-{secrets.token_hex(4)}"
            try:
                staging.mkdir(parents=True)
                files = []
                for output in self.outputs:
                    writer = CASE_WRITERS[output]
                    if writer.applies(case):
                        files.append(f"{name}{writer.suffix}")
                        writer.write(staging / files[-1], case)
                manifest = {**manifest, "outputs": files}
                _write_manifest(staging, name, manifest)
                return _commit(staging, self.output_dir, name, manifest)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise


def rebuild_index(output_dir: str | os.PathLike) -> list[dict]:
    """Rewrite ``scores.csv`` and ``cases.json`` from the manifests of every case folder on disk.

    Runs under the folder lock; rows are sorted by case name. ``cases.json`` maps each name to its
    ``source``, ``score``, ``max_slice`` and ``decision`` (scripts/slicer_review.py reads the sources).
    Returns the manifests listed.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with locked(output_dir):
        manifests = []
        for entry in sorted(output_dir.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                manifest = read_manifest(entry)
                if manifest is not None and manifest.get("name") == entry.name:
                    manifests.append(manifest)
        write_scores_csv(output_dir / SCORES_FILE, manifests)
        cases = {
            m["name"]: {key: m.get(key) for key in ("source", "score", "max_slice", "decision")} for m in manifests
        }
        with atomic_write(output_dir / CASES_FILE) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(cases, f, indent=2)
    return manifests
