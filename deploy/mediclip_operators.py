"""The MONAI Deploy operators of the MediCLIP app: the bundle's inference on the selected series, and its results.

The SDK's `MonaiBundleInferenceOperator` runs a bundle's pre-processing, network and post-processing on an
in-memory image and hands on the prediction cast to uint8, and its `DICOMSegmentationWriterOperator` writes
binary segments. MediCLIP's result is a float anomaly map, a mask at the model's calibrated threshold, an image
score and a decision, written on the series' own grid (a gantry tilt kept). So the app runs the bundle's own
inference recipe (``configs/inference.json``, the same as ``python -m monai.bundle run``) on the selected series
and hands on its case folders, which hold the DICOM SEG and the DICOM Parametric Map made by the package's
writers; `MediclipResultsOperator` puts them, and a report, into the app's output folder.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from mediclip_monai.reporting.case_report import write_case_report
from mediclip_monai.workflows.bundle import config_files

logger = logging.getLogger(__name__)


def find_bundle(model_path: Path) -> Path:
    """The bundle folder (``configs/inference.json``, ``models/model.pt``) at ``model_path``, or the one bundle
    in it (a MONAI Application Package keeps its models one folder down)."""
    candidates = [model_path, *(sorted(p for p in model_path.iterdir() if p.is_dir()) if model_path.is_dir() else [])]
    for folder in candidates:
        if (folder / "configs" / "inference.json").is_file() and (folder / "models" / "model.pt").is_file():
            return folder
    raise FileNotFoundError(
        f"{model_path}: no MediCLIP bundle (configs/inference.json and models/model.pt) here or in a folder in it"
    )


def stage_series(series, root: Path) -> Path:
    """A folder holding (links to) the files of one selected DICOM series: the bundle's input for it."""
    instances = [sop.get_native_sop_instance() for sop in series.get_sop_instances()]
    first = instances[0]
    tail = re.sub(r"\D", "", str(first.get("SeriesInstanceUID", "")))[-8:]
    name = f"{first.get('Modality', 'series')}_series{first.get('SeriesNumber', '')}_{tail}"
    folder = root / re.sub(r"[^A-Za-z0-9_-]", "_", name)
    folder.mkdir(parents=True)
    for index, instance in enumerate(instances):
        (folder / f"{index:05d}.dcm").symlink_to(Path(instance.filename).resolve())
    return folder


def run_bundle_inference(bundle: Path, staged: list[Path], output_dir: Path, overrides: dict) -> list[Path]:
    """The bundle's inference.json on the staged series folders (all in one folder); their case folders."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=config_files("inference.json", bundle),
        meta_file=str(configs / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle),
        ckpt_dir=str(bundle / "models"),
        input=str(staged[0].parent),
        output_dir=str(output_dir),
        num_workers=0,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    cases = json.loads((output_dir / "cases.json").read_text(encoding="utf-8"))
    sources = {folder.resolve() for folder in staged}
    return [output_dir / name for name, case in sorted(cases.items()) if Path(case["source"]).resolve() in sources]


class MediclipInferenceOperator(Operator):
    """Runs the MediCLIP bundle's inference on each selected series; emits the case folders it wrote.

    Named input:
        study_selected_series_list: the `StudySelectedSeries` list of `DICOMSeriesSelectorOperator`.

    Named output:
        case_folders: one finished case folder per series (``io.outputs``: map, mask, .seg.nrrd, DICOM SEG,
            Parametric Map, manifest).
    """

    def __init__(self, fragment: Fragment, *args, bundle: Path, work_dir: Path, overrides: dict, **kwargs):
        """
        Args:
            bundle: the bundle folder (`find_bundle`).
            work_dir: where the series are staged and inferred.
            overrides: inference.json keys (``map_scale``, ``sensitivity``, ``device``, ...).
        """
        self.bundle, self.work_dir, self.overrides = Path(bundle), Path(work_dir), dict(overrides)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study_selected_series_list")
        spec.output("case_folders")

    def compute(self, op_input, op_output, context):
        selections = op_input.receive("study_selected_series_list") or []
        series_root = (self.work_dir / "series").resolve()
        shutil.rmtree(series_root, ignore_errors=True)  # a work folder used before: this run's series only
        chosen = [selected.series for study in selections for selected in study.selected_series]
        staged = [stage_series(series, series_root) for series in chosen]
        if not staged:
            logger.warning("no series matched the selection rules: nothing to infer")
            op_output.emit([], "case_folders")
            return
        logger.info(f"MediCLIP inference on {len(staged)} series: {', '.join(f.name for f in staged)}")
        op_output.emit(run_bundle_inference(self.bundle, staged, self.work_dir / "cases", self.overrides),
                       "case_folders")  # fmt: skip


class MediclipResultsOperator(Operator):
    """Puts each case's DICOM SEG and Parametric Map, and its report (JSON + PDF), into the output folder.

    Named input:
        case_folders: the case folders of `MediclipInferenceOperator`.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("case_folders")

    def compute(self, op_input, op_output, context):
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for folder in op_input.receive("case_folders"):
            manifest = json.loads((folder / f"{folder.name}_case.json").read_text(encoding="utf-8"))
            for output in manifest["outputs"]:
                if output.endswith(".dcm"):  # the DICOM SEG and Parametric Map: what goes back to the PACS
                    shutil.copy2(folder / output, self.output_folder / output)
            write_case_report(folder, self.output_folder)
            logger.info(f"{folder.name}: {manifest['decision']} (score {manifest['score']:.3f}); outputs in "
                        f"{self.output_folder}")  # fmt: skip
