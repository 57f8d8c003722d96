"""The MONAI Deploy app (deploy/) run headless as a hospital runs it, on the demo DICOM series beside a series
its rules leave out: a DICOM SEG, a Parametric Map and a report come out, read back with highdicom and pydicom.

The app needs the MONAI Deploy App SDK, which lives in its own environment: ``$MEDICLIP_DEPLOY_PYTHON``
(default ``<repo>/.venv-deploy/bin/python``, made by scripts/setup_deploy_env.sh); the run is skipped without
it. Without the SDK the app says which extra to install (tested with this interpreter)."""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.dicom_series import write_series

from .conftest import REPO, cli

DEPLOY_PYTHON = Path(os.environ.get("MEDICLIP_DEPLOY_PYTHON", Path(REPO) / ".venv-deploy" / "bin" / "python"))
APP = os.path.join(REPO, "deploy", "app.py")

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


@pytest.mark.skipif(importlib.util.find_spec("monai.deploy") is not None, reason="the SDK is installed here")
def test_without_the_sdk_the_app_names_the_extra_to_install(tmp_path):
    result = cli([sys.executable, APP, "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path)],
                 timeout=120, env={"PYTHONPATH": REPO})  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: The MediCLIP MONAI Deploy app needs the package 'monai.deploy', which is not installed: "
        'pip install -e ".[deploy]" (or scripts/setup_deploy_env.sh)'
    )
    assert "Traceback" not in result.stderr


needs_deploy_env = pytest.mark.skipif(
    not DEPLOY_PYTHON.exists(),
    reason=f"MONAI Deploy environment not found at {DEPLOY_PYTHON}; make it with scripts/setup_deploy_env.sh "
    "(or set MEDICLIP_DEPLOY_PYTHON)",
)


def test_the_packaged_app_installs_the_projects_own_dependency_pins():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (Path(REPO) / "deploy" / "requirements.txt").read_text().splitlines()
    required = [line for line in lines if line.strip() and not line.startswith("#")]
    assert required and set(required) <= set(project)


@needs_deploy_env
def test_app_yaml_is_a_valid_package_configuration():
    check = (
        "import sys; from pathlib import Path; "
        "from holoscan_cli.packager.config_reader import ApplicationConfiguration; "
        "c = ApplicationConfiguration(); c.read(Path(sys.argv[1])); print(c.title())"
    )
    result = cli([str(DEPLOY_PYTHON), "-c", check, os.path.join(REPO, "deploy", "app.yaml")], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "MediCLIP anomaly detection - DICOM SEG and Parametric Map"


@pytest.mark.slow
@needs_deploy_env
def test_the_app_turns_the_demo_series_into_seg_parametric_map_and_report(demo_dir, trained, tmp_path):
    bundle = tmp_path / "models" / "mediclip"  # a MONAI Application Package's layout: the bundle one folder down
    shutil.copytree(os.path.join(REPO, "bundle", "configs"), bundle / "configs")
    (bundle / "models").mkdir()
    shutil.copy(os.path.join(trained, "model.pt"), bundle / "models" / "model.pt")
    study = tmp_path / "input"
    shutil.copytree(os.path.join(demo_dir, "test", "brain_volume_dicom"), study / "axial_mr")
    sagittal = write_series(study / "sagittal_mr", orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                            positions=[(-10.0 + 3 * k, 0.0, 0.0) for k in range(4)])  # fmt: skip
    for path in sagittal:  # the selector's orientation rule reads PatientPosition
        ds = pydicom.dcmread(path)
        ds.PatientPosition = "HFS"
        ds.save_as(path)

    command = [str(DEPLOY_PYTHON), APP, "-i", str(study), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "models")]
    result = cli([*command, "-w", str(tmp_path / "work")], timeout=600, env={"PYTHONPATH": REPO})

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    source = sorted((pydicom.dcmread(p) for p in (study / "axial_mr").iterdir()), key=lambda ds: ds.InstanceNumber)
    written = sorted(os.listdir(tmp_path / "out"))
    assert len(written) == 4, written  # the axial series only: the sagittal one is not selected
    name = written[0].removesuffix("_anomaly_map.dcm")
    assert written == [f"{name}_anomaly_map.dcm", f"{name}_anomaly_seg.dcm", f"{name}_report.json",
                       f"{name}_report.pdf"]  # fmt: skip
    uids = [ds.SOPInstanceUID for ds in source]

    stored = pydicom.dcmread(tmp_path / "out" / f"{name}_anomaly_map.dcm")
    assert stored.pixel_array.dtype == np.float32  # float pixel data, not rescaled integers
    parametric_map = hd.pm.ParametricMap.from_dataset(stored)
    seg = hd.seg.segread(tmp_path / "out" / f"{name}_anomaly_seg.dcm")
    for derived in (parametric_map, seg):
        assert derived.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
        instances = derived.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert {item.ReferencedSOPInstanceUID for item in instances} == set(uids)
        assert derived.SeriesInstanceUID != source[0].SeriesInstanceUID
        assert derived.StudyInstanceUID == source[0].StudyInstanceUID
    positions = {ds.SOPInstanceUID: np.asarray(ds.ImagePositionPatient, float) for ds in source}
    for item in parametric_map.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
                                   positions[uid], atol=1e-4)  # fmt: skip
    mapping = parametric_map.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "ANOMALY_NORM"  # the app writes the normalised scale: 0.5 = the threshold
    values = parametric_map.get_pixels_by_source_instance(uids)
    mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])[..., 0]
    assert values.shape == (len(uids), source[0].Rows, source[0].Columns)
    np.testing.assert_array_equal(values >= 0.5, mask > 0)  # the map's 0.5 iso-line is the SEG

    report = json.loads((tmp_path / "out" / f"{name}_report.json").read_text())
    assert report["series"]["SeriesInstanceUID"] == source[0].SeriesInstanceUID
    assert report["decision"] in ("normal", "abnormal") and report["map_scale"] == "normalised"
    assert report["anomalous_voxels"] == int((mask > 0).sum())
    assert (tmp_path / "out" / f"{name}_report.pdf").read_bytes().startswith(b"%PDF")
