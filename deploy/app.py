"""MediCLIP anomaly detection as a MONAI Deploy application: DICOM in, DICOM SEG + Parametric Map + report out.

    python deploy/app.py -i DICOM_FOLDER -o OUTPUT -m BUNDLE [-w WORK_DIR]

The graph: the SDK's `DICOMDataLoaderOperator` reads the studies under ``-i``, its `DICOMSeriesSelectorOperator`
picks the series by the rules in ``series_selection.json`` (beside this file: axial MR and CT), then
`MediclipInferenceOperator` runs the bundle's inference recipe on them and `MediclipResultsOperator` writes, per
series, ``<name>_anomaly_seg.dcm`` (DICOM SEG of the mask), ``<name>_anomaly_map.dcm`` (DICOM Parametric Map of
the anomaly map) and ``<name>_report.json`` / ``.pdf`` into ``-o``.

``-m`` is a MediCLIP bundle folder (``configs/inference.json`` and ``models/model.pt``, as this repository's
``bundle/`` after training), or a folder holding one (a MONAI Application Package's models folder). The map is
written in the normalised scale (0.5 = the model's calibrated threshold, so one window fits every model) unless
``MEDICLIP_MAP_SCALE=probability``; ``MEDICLIP_SENSITIVITY`` (0 to 1, default 0.5) moves the mask threshold.
The inputs may also come from the SDK's variables (``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``,
``HOLOSCAN_MODEL_PATH``, ``HOLOSCAN_WORKDIR``), as in a packaged app.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from mediclip_monai.errors import install_excepthook, require_package

install_excepthook()  # a user's mistake ends with its reason as the last line, as in the bundle's commands
require_package(
    "monai.deploy", "The MediCLIP MONAI Deploy app", 'pip install -e ".[deploy]" (or scripts/setup_deploy_env.sh)'
)

from mediclip_operators import MediclipInferenceOperator, MediclipResultsOperator, find_bundle  # noqa: E402
from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import Application  # noqa: E402
from monai.deploy.operators import DICOMDataLoaderOperator, DICOMSeriesSelectorOperator  # noqa: E402

SERIES_RULES = Path(__file__).resolve().parent / "series_selection.json"


def inference_overrides() -> dict:
    """The inference.json keys the app sets: the map scale and sensitivity (from the environment)."""
    return {
        "map_scale": os.environ.get("MEDICLIP_MAP_SCALE", "normalised"),
        "sensitivity": os.environ.get("MEDICLIP_SENSITIVITY", "0.5"),
    }


class MediclipAnomalyApp(Application):
    """DICOM series in; per selected series a DICOM SEG, a DICOM Parametric Map and a report out."""

    def compose(self):
        context = Application.init_app_context(self.argv)
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        bundle = find_bundle(Path(context.model_path))
        if context.workdir:
            work_dir = Path(context.workdir)
        else:  # removed when the app ends
            self._scratch = tempfile.TemporaryDirectory(prefix="mediclip_deploy_")
            work_dir = Path(self._scratch.name)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, name="study_loader")
        selector = DICOMSeriesSelectorOperator(
            self, rules=SERIES_RULES.read_text(encoding="utf-8"), all_matched=True, name="series_selector"
        )
        inference = MediclipInferenceOperator(
            self, bundle=bundle, work_dir=work_dir, overrides=inference_overrides(), name="mediclip_inference"
        )
        results = MediclipResultsOperator(self, output_folder=output_path, name="mediclip_results")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, inference, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(inference, results, {("case_folders", "case_folders")})


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    MediclipAnomalyApp().run()


if __name__ == "__main__":
    main()
