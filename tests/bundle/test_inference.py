"""inference.json and evaluate.json run as users run them, on files written by the tests and read back."""

import csv
import glob
import json
import os

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sklearn.metrics import roc_auc_score

from mediclip_monai.networks.extra_state import extra_state

from .conftest import EVALUATE, INFERENCE, REPO, cli, layered, run_workflow


def infer(ckpt_dir, input_path, output_dir, **overrides):
    return run_workflow(
        INFERENCE,
        run_id="inference",
        bundle_root=os.path.join(REPO, "bundle"),
        ckpt_dir=ckpt_dir,
        input=str(input_path),
        output_dir=str(output_dir),
        device="cpu",
        **overrides,
    )


def oblique_affine():
    rotation = np.array([[0.0, 0.0, -1.0], [0.96, 0.28, 0.0], [-0.28, 0.96, 0.0]])  # non-RAS, oblique
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.1, 3.0])  # anisotropic
    affine[:3, 3] = [12.0, -30.0, 7.5]
    return affine


def brain_like_volume(shape):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    return (np.clip(1 - (grid**2).sum(0), 0, None) * 800 + 50 * grid[0]).astype(np.float32)


def test_oblique_anisotropic_nifti_map_and_mask_keep_shape_and_affine(trained, tmp_path):
    # the axial axis of this affine is array axis 1 (its column has the largest S component)
    volume = brain_like_volume((20, 24, 10))
    source = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(volume, oblique_affine()), str(source))
    infer(trained, source, tmp_path / "out")
    case = tmp_path / "out" / "oblique"
    for suffix, dtype in (("_anomaly_map.nii.gz", np.float32), ("_anomaly_mask.nii.gz", np.uint8)):
        written = nib.load(str(case / f"oblique{suffix}"))
        assert written.shape == volume.shape
        np.testing.assert_allclose(written.affine, oblique_affine(), atol=1e-5)
        assert written.get_fdata(dtype=np.float32).dtype == np.float32 and written.get_data_dtype() == dtype
        itk_written, itk_source = sitk.ReadImage(str(case / f"oblique{suffix}")), sitk.ReadImage(str(source))
        assert itk_written.GetSize() == itk_source.GetSize()
        for index in [(0, 0, 0), (19, 23, 9), (5, 17, 3)]:
            np.testing.assert_allclose(
                itk_written.TransformIndexToPhysicalPoint(index),
                itk_source.TransformIndexToPhysicalPoint(index),
                atol=1e-4,
            )
    anomaly_map = nib.load(str(case / "oblique_anomaly_map.nii.gz")).get_fdata()
    assert 0 <= anomaly_map.min() and anomaly_map.max() <= 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert rows[0]["name"] == "oblique"
    # the calibrated model's own rules and thresholds (threshold null): the mask of its default branch's map;
    # the score by its image-level rule (a probability; see tests/workflows/test_inferers.py), whose
    # threshold decides, and the slice that holds it along the axial axis (24 slices)
    stored = torch.load(os.path.join(trained, "model.pt"), map_location="cpu", weights_only=True)
    calibration = extra_state(stored)["calibration"]
    branch = calibration["default_branch"]
    assert 0 < float(rows[0]["score"]) < 1 and 0 <= int(rows[0]["max_slice"]) < 24
    pixel, image = calibration["pixel_threshold"][branch], calibration["image_level"]["threshold"]
    assert float(rows[0]["threshold"]) == pytest.approx(pixel)
    assert float(rows[0]["image_threshold"]) == pytest.approx(image)
    assert rows[0]["decision"] == ("abnormal" if float(rows[0]["score"]) >= image else "normal")
    data, header = nrrd.read(str(case / "oblique_anomaly.seg.nrrd"))
    assert header["Segment0_Name"] == "anomaly"
    mask = nib.load(str(case / "oblique_anomaly_mask.nii.gz")).get_fdata()
    np.testing.assert_array_equal(data, mask)
    np.testing.assert_array_equal(mask, anomaly_map >= np.float32(pixel))
    assert not glob.glob(str(tmp_path / "out" / "**" / "*.tmp*"), recursive=True)


def write_dicom_series(folder, volume, spacing=(0.9, 0.7), thickness=2.5):
    """An axial MR series in LPS with rows along +x (patient left) and columns along +y (posterior)."""
    folder.mkdir()
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for k in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Test^Anomaly", "T001"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID, ds.SeriesNumber = "20260101", "120000", "A1", "1", 1
        ds.Manufacturer, ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "test", "", "", "O"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-40.0, -60.0, 20.0 + k * thickness]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = volume[k].astype(np.int16).tobytes()
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)
    return folder


def test_dicom_series_outputs_sit_on_the_series_voxels_and_seg_references_it(trained, tmp_path):
    volume = brain_like_volume((6, 28, 24))  # slices, rows, columns
    series = write_dicom_series(tmp_path / "series", volume)
    infer(trained, series, tmp_path / "out", threshold=0.0)  # threshold 0: every voxel in the SEG
    case = tmp_path / "out" / "series"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    itk_series = reader.Execute()
    itk_map = sitk.ReadImage(str(case / "series_anomaly_map.nii.gz"))
    assert itk_map.GetNumberOfPixels() == itk_series.GetNumberOfPixels()
    # every map voxel centre is a series voxel centre, and the corners match as sets
    size = itk_map.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    map_points = {tuple(np.round(itk_map.TransformIndexToPhysicalPoint(c), 3)) for c in corners}
    ssize = itk_series.GetSize()
    scorners = [(i, j, k) for i in (0, ssize[0] - 1) for j in (0, ssize[1] - 1) for k in (0, ssize[2] - 1)]
    series_points = {tuple(np.round(itk_series.TransformIndexToPhysicalPoint(c), 3)) for c in scorners}
    assert map_points == series_points
    # the map's grid is the series' grid: voxel values written through the same path land on the same
    # physical points, so a bright marker in the series is found where the map's writer would put it
    from mediclip_monai.data.loading import read_image
    from mediclip_monai.io.writers import write_anomaly_map

    image = read_image(str(series))
    marker = np.asarray(image[0]) / np.asarray(image[0]).max()
    write_anomaly_map(tmp_path / "marker.nii.gz", marker, np.asarray(image.affine))
    itk_marker = sitk.ReadImage(str(tmp_path / "marker.nii.gz"))
    series_max = sitk.GetArrayFromImage(itk_series).max()
    rng = np.random.default_rng(0)
    for _ in range(20):
        index = tuple(int(rng.integers(0, n)) for n in ssize)
        point = itk_series.TransformIndexToPhysicalPoint(index)
        marker_index = itk_marker.TransformPhysicalPointToIndex(point)
        expected = min(max(itk_series[index] / series_max, 0.0), 1.0)  # maps are written clipped to [0, 1]
        assert itk_marker[marker_index] == pytest.approx(expected, abs=1e-5)
    seg = hd.seg.segread(str(case / "series_anomaly_seg.dcm"))
    referenced = {ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(str(f)).SOPInstanceUID for f in series.iterdir()}
    assert seg.SegmentSequence[0].SegmentLabel == "anomaly"


def test_png_gives_a_2d_map_of_its_size(trained, tmp_path):
    picture = (brain_like_volume((37, 53, 1))[..., 0] / 850 * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "xray.png")
    infer(trained, tmp_path / "xray.png", tmp_path / "out")
    written = nib.load(str(tmp_path / "out" / "xray" / "xray_anomaly_map.nii.gz"))
    assert written.ndim == 2
    from mediclip_monai.data.loading import read_image

    assert written.shape == tuple(read_image(tmp_path / "xray.png").shape[1:])
    assert not (tmp_path / "out" / "xray" / "xray_anomaly_seg.dcm").exists()


@pytest.mark.slow
def test_bad_cases_reported_good_cases_written_and_exit_nonzero(trained, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(brain_like_volume((16, 16, 6)), np.eye(4)), str(inputs / "good.nii.gz"))
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00broken gzip")
    (inputs / "notes.png").write_text("not a picture")
    (inputs / "empty_folder").mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 3), np.float32), np.eye(4)), str(inputs / "four_d.nii.gz"))
    result = cli(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            layered(INFERENCE),
            "--input",
            str(inputs),
            "--output_dir",
            str(tmp_path / "out"),
            "--ckpt_dir",
            trained,
            "--device",
            "cpu",
        ],
        timeout=300,
    )
    assert result.returncode != 0
    # The run ends with its summary, no traceback: one line per bad case, naming its file and the reason.
    assert "Traceback" not in result.stdout + result.stderr
    summary = result.stderr.rstrip().splitlines()[-5:]
    assert summary[0] == "error: 4 of 5 case(s) failed:", result.stderr[-3000:]
    reasons = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in summary[1:]}
    assert sorted(reasons) == sorted(
        str(inputs / bad) for bad in ("corrupt.nii.gz", "notes.png", "empty_folder", "four_d.nii.gz")
    )
    assert reasons[str(inputs / "four_d.nii.gz")].endswith("give a single 2D or 3D image")
    assert reasons[str(inputs / "corrupt.nii.gz")].startswith("not a readable NIfTI image")
    assert (tmp_path / "out" / "good" / "good_anomaly_map.nii.gz").exists()
    assert [r["name"] for r in csv.DictReader(open(tmp_path / "out" / "scores.csv"))] == ["good"]
    leftovers = [p for p in glob.glob(str(tmp_path / "out" / "**" / "*"), recursive=True) if ".tmp" in p]
    assert leftovers == []
    assert sorted(os.listdir(tmp_path / "out")) == ["cases.json", "good", "scores.csv"]


@pytest.mark.slow
def test_evaluate_on_demo_test_set_matches_an_independent_computation(trained, demo_dir, tmp_path):
    result = cli(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            layered(INFERENCE, EVALUATE),
            "--dataset_dir",
            demo_dir,
            "--ckpt_dir",
            trained,
            "--output_dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--clip_model",
            "mediclip-tiny",
            "--clip_pretrained",
            "none",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    eval_dir = tmp_path / "eval"
    for name in ("metrics.json", "cases.csv", "roc.png", "montage.png"):
        assert (eval_dir / name).stat().st_size > 0
    metrics = json.load(open(eval_dir / "metrics.json"))
    cases = list(csv.DictReader(open(eval_dir / "cases.csv")))
    labels = [int(c["truth"] == "abnormal") for c in cases]
    scores = [float(c["score"]) for c in cases]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    # pixel AUROC against scikit-learn on maps known without the code under test: see
    # test_engine_recipes.py::test_evaluation_metrics_match_scikit_learn_on_known_maps (a network stub)
    assert 0 <= metrics["pixel_auroc"] <= 1
    assert 0 <= metrics["pixel_aupro"] <= 1
    # the calibrated model is reported on every branch from one pass; the top level is its default branch's map
    # with its image-level score, and what the calibration chose, with its figures there
    branch = metrics["calibration"]["default_branch"]
    assert metrics["anomaly_branch"] == branch and metrics["image_score"] == "image_level"
    assert metrics["image_threshold"] == metrics["calibration"]["image_level"]["threshold"]
    assert set(metrics["calibration"]["choice"]["image_auroc"]) == {"mediclip", "memory_bank", "fused", "image_level"}
    branches = metrics["branches"]
    assert set(branches) == {"mediclip", "memory_bank", "fused"}
    for values in branches.values():
        assert set(values) == {
            "image_auroc", "image_max_f1", "pixel_auroc", "pixel_aupro", "pixel_dice", "image_accuracy",
            "image_sensitivity", "image_specificity", "threshold", "image_threshold",
        }  # fmt: skip
        assert all(0 <= values[key] <= 1 for key in ("image_auroc", "pixel_auroc", "pixel_dice", "image_accuracy"))
    for key in ("pixel_auroc", "pixel_aupro"):
        assert branches[branch][key] == pytest.approx(metrics[key]), key
    assert metrics["threshold"] == pytest.approx(branches[branch]["threshold"])
    decisions = [int(c["decision"] == "abnormal") for c in cases]
    abnormal = [d for d, t in zip(decisions, labels) if t]
    normal = [1 - d for d, t in zip(decisions, labels) if not t]
    assert metrics["image_sensitivity"] == pytest.approx(np.mean(abnormal))
    assert metrics["image_specificity"] == pytest.approx(np.mean(normal))


@pytest.mark.slow
def test_inference_and_evaluation_give_a_case_one_score_in_one_vocabulary(trained, tmp_path):
    # Off the model grid on purpose (evaluation maps on 224 x 224 slices, inference writes the case's grid).
    nib.save(nib.Nifti1Image(brain_like_volume((30, 26, 6)), oblique_affine()), str(tmp_path / "volume.nii.gz"))
    mask = np.zeros((30, 26, 6), np.uint8)
    mask[10:16, 8:14, 2:4] = 1
    nib.save(nib.Nifti1Image(mask, oblique_affine()), str(tmp_path / "volume_mask.nii.gz"))
    for name in ("normal_no_mask", "abnormal_no_mask"):
        nib.save(nib.Nifti1Image(brain_like_volume((40, 34)), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    test = [
        {"image": "volume.nii.gz", "label": "volume_mask.nii.gz", "abnormal": 1},
        {"image": "normal_no_mask.nii.gz", "abnormal": 0},
        {"image": "abnormal_no_mask.nii.gz", "abnormal": 1},
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"test": test}))
    infer(trained, tmp_path / "datalist.json", tmp_path / "inferred", num_workers=0)
    run_workflow(
        [INFERENCE, EVALUATE],
        run_id="evaluating",
        bundle_root=os.path.join(REPO, "bundle"),
        ckpt_dir=trained,
        datalist=str(tmp_path / "datalist.json"),
        output_dir=str(tmp_path / "evaluated"),
        device="cpu",
        num_workers=0,
    )
    scores_csv = tmp_path / "inferred" / "scores.csv"
    cases_csv = tmp_path / "evaluated" / "eval" / "cases.csv"
    # The columns both files have come first, under the same names; "abnormal" is a value, never a column.
    assert scores_csv.read_text().splitlines()[0] == "name,score,max_slice,decision,threshold,image_threshold"
    assert cases_csv.read_text().splitlines()[0] == "name,score,max_slice,decision,truth,has_mask"
    inferred = {row["name"]: row for row in csv.DictReader(open(scores_csv))}
    evaluated = {row["name"]: row for row in csv.DictReader(open(cases_csv))}
    assert sorted(inferred) == sorted(evaluated) == ["abnormal_no_mask", "normal_no_mask", "volume"]
    for name, row in evaluated.items():
        assert float(row["score"]) == float(inferred[name]["score"]), name  # the same number, to the last bit
        assert (row["max_slice"], row["decision"]) == (inferred[name]["max_slice"], inferred[name]["decision"])
        assert row["decision"] in ("abnormal", "normal")
    assert {name: (row["truth"], row["has_mask"]) for name, row in evaluated.items()} == {
        "volume": ("abnormal", "1"),
        "normal_no_mask": ("normal", "0"),  # counted as all normal in the pixel metrics, but no mask was given
        "abnormal_no_mask": ("abnormal", "0"),
    }


@pytest.mark.slow
def test_an_inference_run_prints_only_what_is_true_and_useful(trained, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(brain_like_volume((20, 16, 4)), np.eye(4)), str(inputs / f"{name}.nii.gz"))
    args = [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        layered(INFERENCE),
        "--input",
        str(inputs),
        "--ckpt_dir",
        trained,
    ]
    args += ["--output_dir", str(tmp_path / "out"), "--device", "cpu", "--num_workers", "2"]
    result = cli([*args, "--clip_model", "ViT-B-16"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # What was loaded, said once: a trained model, not a randomly initialised one.
    model = os.path.join(trained, "model.pt")
    assert f"model {model}: backbone mediclip-tiny (clip_pretrained none), fused map, calibrated" in output
    assert "initialized randomly" not in output and "Parsing model identifier" not in output
    assert "Model mediclip-tiny creation process complete" not in output and "SimpleTokenizer" not in output
    # The optional GPU decoder is nobody's business here, in any of the reading processes.
    assert "nvImageCodec" not in output and "NvImgCodec" not in output
    # A key inference does not use, echoed by MONAI's input summary, is said to be unused.
    assert "--clip_model ViT-B-16 is not used: inference runs the backbone model.pt was trained on" in output
    assert "2 case(s) listed in scores.csv, 0 failed in this run" in output


def test_a_folder_of_nifti_files_is_one_case_per_file_and_a_series_folder_is_one_case(tmp_path):
    from mediclip_monai.data.cases import find_cases

    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        nib.save(nib.Nifti1Image(brain_like_volume((8, 8, 3)), np.eye(4)), str(folder / name))
    assert [(c.name, os.path.basename(c.source)) for c in find_cases(str(folder))] == [
        ("a", "a.nii.gz"),
        ("b", "b.nii.gz"),
    ]
    series = write_dicom_series(tmp_path / "series", brain_like_volume((3, 8, 8)))
    assert [c.name for c in find_cases(str(series))] == ["series"]
    (folder / "series").symlink_to(series)
    assert [c.name for c in find_cases(str(folder))] == ["a", "b", "series"]


def test_a_datalist_input_gives_its_test_cases(tmp_path):
    from mediclip_monai.data.cases import find_cases

    nib.save(nib.Nifti1Image(brain_like_volume((8, 8, 1))[..., 0], np.eye(4)), str(tmp_path / "t1.nii.gz"))
    (tmp_path / "datalist.json").write_text(
        json.dumps({"training": [{"image": "other.nii.gz"}], "test": [{"image": "t1.nii.gz", "abnormal": 1}]})
    )
    cases = find_cases(str(tmp_path / "datalist.json"))
    assert [(c.name, c.source) for c in cases] == [("t1", str(tmp_path / "t1.nii.gz"))]
