"""DICOM inputs a user brings, run through inference.json as a user runs it: an anonymised export gets its
DICOM SEG; a series with a missing slice is refused with the reason while the other case is written; a
gantry-tilted series gets outputs whose voxels lie where the series' own position tags put its pixels."""

import json
import os

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import slicerio

from tests.dicom_series import (
    PATIENT_AND_STUDY,
    pixel_positions,
    strip,
    voxel_indices,
    write_series,
    write_tilted_series,
)

from .conftest import INFERENCE, TRAIN, cli, layered, run_workflow, small_training


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained_dicom")
    run_workflow(TRAIN, **small_training(demo_dir, root, epochs=1))
    return str(root / "models")


@pytest.mark.slow
def test_anonymised_series_gets_its_seg_and_a_gapped_series_is_refused(trained, tmp_path):
    inputs = tmp_path / "inputs"
    positions = [(-40.0, -60.0, 20.0 + 2.5 * k) for k in range(6)]
    anonymised = write_series(inputs / "anonymised", positions=positions, rows=24, columns=20)
    strip(anonymised, PATIENT_AND_STUDY)  # no SliceThickness either: write_series leaves it out
    gapped = write_series(inputs / "gapped", positions=positions, rows=24, columns=20)
    gapped[3].unlink()

    result = cli(
        ["-m", "monai.bundle", "run", "--config_file", layered(INFERENCE), "--input", str(inputs),
         "--output_dir", str(tmp_path / "out"), "--ckpt_dir", trained, "--device", "cpu", "--threshold", "0.0"],
        timeout=300,
    )  # fmt: skip

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{inputs / 'gapped'}: slices are not evenly spaced: slices 3-4 (s2.dcm, s4.dcm) are 5 mm apart" in output
    assert not (tmp_path / "out" / "gapped").exists()
    case = tmp_path / "out" / "anonymised"
    seg = hd.seg.segread(case / "anonymised_anomaly_seg.dcm")
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in anonymised}
    assert int(seg.NumberOfFrames) == len(anonymised)  # threshold 0: every slice has a frame
    assert nib.load(case / "anonymised_anomaly_map.nii.gz").shape == (20, 24, 6)
    assert sorted(os.listdir(case)) == [
        "anonymised_anomaly.seg.nrrd",
        "anonymised_anomaly_map.dcm",  # the DICOM Parametric Map of the map
        "anonymised_anomaly_map.nii.gz",
        "anonymised_anomaly_mask.nii.gz",
        "anonymised_anomaly_seg.dcm",
        "anonymised_case.json",  # the case's manifest, written last (io.outputs)
    ]


@pytest.mark.slow
def test_a_gantry_tilted_series_gets_every_output_on_its_instances_positions(trained, tmp_path):
    files = write_tilted_series(tmp_path / "tilted", degrees=20.0, slices=8, rows=24, columns=20)

    result = cli(
        ["-m", "monai.bundle", "run", "--config_file", layered(INFERENCE), "--input", str(tmp_path / "tilted"),
         "--output_dir", str(tmp_path / "out"), "--ckpt_dir", trained, "--device", "cpu", "--threshold", "0.0"],
        timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the slices step 20.0 degrees off their normal (gantry tilt)" in result.stdout + result.stderr
    case = tmp_path / "out" / "tilted"
    anomaly_map = nib.load(case / "tilted_anomaly_map.nii.gz")
    mask = nib.load(case / "tilted_anomaly_mask.nii.gz")
    segmentation = slicerio.read_segmentation(str(case / "tilted_anomaly.seg.nrrd"))
    assert int(anomaly_map.get_qform(coded=True)[1]) == int(mask.get_qform(coded=True)[1]) == 0  # sform alone
    grids = {
        "map": (np.diag([-1.0, -1.0, 1.0, 1.0]) @ anomaly_map.get_sform(), anomaly_map.shape),
        "mask": (np.diag([-1.0, -1.0, 1.0, 1.0]) @ mask.get_sform(), mask.shape),
        "seg.nrrd": (segmentation["ijkToLPS"], segmentation["voxels"].shape),
    }
    mask_values = np.asarray(mask.dataobj)
    threshold = json.loads((case / "tilted_case.json").read_text())["threshold"]
    for name, (lps_affine, shape) in grids.items():
        covered = np.zeros(shape, dtype=int)
        for path in files:  # each instance, from the first slice to the last
            points, _ = pixel_positions(path)
            index = voxel_indices(points, lps_affine, shape)  # a voxel centre at every pixel's tag position
            covered[index] += 1
            if name == "map":
                np.testing.assert_array_equal(mask_values[index], np.asarray(anomaly_map.dataobj)[index] >= threshold)
            if name == "seg.nrrd":
                np.testing.assert_array_equal(segmentation["voxels"][index], mask_values[index])
        assert (covered == 1).all(), name  # the instances' pixels and the grid's voxels: one to one

    seg = pydicom.dcmread(case / "tilted_anomaly_seg.dcm")
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
    frames = seg.pixel_array.reshape(-1, 24, 20)
    framed = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in sources[uid].ImagePositionPatient],
            atol=1e-4,
        )
        np.testing.assert_array_equal(frame, 1)  # threshold 0: every pixel of every frame
        framed.append(uid)
    assert sorted(framed) == sorted(sources)  # a frame on every instance, the last slice's included

    # the Parametric Map's frames too, each holding the map's values at its instance's pixels
    parametric_map = pydicom.dcmread(case / "tilted_anomaly_map.dcm")
    map_values, map_lps = np.asarray(anomaly_map.dataobj), grids["map"][0]
    map_frames = parametric_map.pixel_array.reshape(-1, 24, 20)
    framed = []
    for frame, item in zip(map_frames, parametric_map.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-4)
        path = next(f for f in files if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == uid)
        points, _ = pixel_positions(path)
        np.testing.assert_array_equal(frame, map_values[voxel_indices(points, map_lps, map_values.shape)])
        framed.append(uid)
    assert sorted(framed) == sorted(sources)
