"""inference.json and evaluate.json as MONAI engine recipes: MONAI's property checks, case names, the
shared output folder, resumable runs, torchrun sharding, and evaluation against known maps."""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from mediclip_monai.workflows.engines import CaseFailuresError

from ..stubs import IntensityMapNetwork
from ..test_metrics import _naive_aupro
from .conftest import (
    EVALUATE,
    INFERENCE,
    LOGGING,
    META,
    MULTI_GPU_INFERENCE,
    REPO,
    TRAIN,
    cli,
    free_port,
    layered,
    layers,
    root_cause,
    small_training,
)
from .test_inference import brain_like_volume, write_dicom_series


def workflow(config_file, workflow_type, **overrides):
    return ConfigWorkflow(
        config_file=config_file, meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides
    )


def write_volume(path, shape=(16, 16, 4), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32) * 400
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.5, 1.0])), str(path))
    return path


def stub_inference(tmp_path, input_path, output_dir, **overrides):
    """inference.json in-process with the network stub (the digest of a stand-in model file as its identity)."""
    model = tmp_path / "stub_model.pt"
    model.write_bytes(b"stub")
    values = {
        "input": str(input_path),
        "output_dir": str(output_dir),
        "ckpt_path": str(model),
        "network_def": IntensityMapNetwork(),
        "device": "cpu",
        "num_workers": 0,
        "threshold": 0.5,  # the stub carries no calibrated threshold
        **overrides,
    }
    run = workflow(layers(INFERENCE), "infer", **values)
    run.initialize()
    try:
        run.run()
    finally:
        run.finalize()
    return run


def scores(output_dir):
    return {r["name"]: r for r in csv.DictReader(open(os.path.join(output_dir, "scores.csv")))}


# --- MONAI's view of the recipes ------------------------------------------------------------------------


def test_inference_train_and_evaluation_pass_monai_property_checks(trained, demo_dir, tmp_path):
    infer = workflow(
        layers(INFERENCE), "infer", ckpt_dir=trained, input=str(write_volume(tmp_path / "v.nii.gz")), device="cpu"
    )
    infer.initialize()
    assert infer.check_properties() == []
    assert isinstance(infer.inferer, Inferer) and isinstance(infer.evaluator, SupervisedEvaluator)
    probabilities = infer.network_def(torch.zeros(2, 3, 224, 224))
    assert tuple(probabilities.shape) == (2, 2, 224, 224)

    train = workflow(layers(TRAIN), "train", **small_training(demo_dir, tmp_path))
    train.initialize()
    assert train.check_properties() == []

    evaluate = workflow(layers(INFERENCE, EVALUATE), "eval", **small_training(demo_dir, tmp_path, ckpt_dir=trained))
    evaluate.initialize()
    assert evaluate.check_properties() == []
    assert isinstance(evaluate.inferer, Inferer) and isinstance(evaluate.evaluator, SupervisedEvaluator)


# --- case names and the shared output folder ------------------------------------------------------------


def test_same_stems_get_distinct_outputs_and_nothing_is_overwritten(tmp_path):
    write_volume(tmp_path / "site1" / "t1.nii.gz", seed=1)
    write_volume(tmp_path / "site2" / "t1.nii.gz", seed=2)
    write_volume(tmp_path / "site2" / "scan.nii.gz", seed=3)
    Image.fromarray((np.random.default_rng(4).random((20, 24)) * 255).astype(np.uint8)).save(
        tmp_path / "site2" / "scan.png"
    )
    (tmp_path / "datalist.json").write_text(
        json.dumps({"test": [{"image": p} for p in ("site1/t1.nii.gz", "site2/t1.nii.gz", "site2/scan.nii.gz")]})
    )
    stub_inference(tmp_path, tmp_path / "datalist.json", tmp_path / "out")
    assert sorted(scores(tmp_path / "out")) == ["scan", "site1_t1", "site2_t1"]
    stub_inference(tmp_path, tmp_path / "site2", tmp_path / "out")
    # the folder run names scan.nii.gz and scan.png apart; "scan" on disk already holds site2/scan.nii.gz
    listed = scores(tmp_path / "out")
    assert sorted(listed) == ["scan", "scan_nii_gz", "scan_png", "site1_t1", "site2_t1", "t1"]
    cases = json.load(open(tmp_path / "out" / "cases.json"))
    assert cases["site1_t1"]["source"] == str(tmp_path / "site1" / "t1.nii.gz")
    assert cases["scan_png"]["source"] == str(tmp_path / "site2" / "scan.png")
    # a rerun of the datalist finds its cases again under their names: complete, skipped
    before = os.stat(tmp_path / "out" / "site1_t1" / "site1_t1_anomaly_map.nii.gz").st_mtime_ns
    stub_inference(tmp_path, tmp_path / "datalist.json", tmp_path / "out")
    assert os.stat(tmp_path / "out" / "site1_t1" / "site1_t1_anomaly_map.nii.gz").st_mtime_ns == before
    assert sorted(scores(tmp_path / "out")) == sorted(listed)


def test_a_rerun_skips_complete_cases_unless_overwrite_or_another_threshold(tmp_path, capsys):
    for i in range(2):
        write_volume(tmp_path / "in" / f"v{i}.nii.gz", seed=i)
    map_file = tmp_path / "out" / "v0" / "v0_anomaly_map.nii.gz"
    stub_inference(tmp_path, tmp_path / "in", tmp_path / "out")
    first = os.stat(map_file).st_mtime_ns
    os.remove(tmp_path / "out" / "v1" / "v1_anomaly.seg.nrrd")  # v1 no longer complete
    capsys.readouterr()
    run = stub_inference(tmp_path, tmp_path / "in", tmp_path / "out")
    assert "1 of 2 case(s) already complete" in capsys.readouterr().out
    assert os.stat(map_file).st_mtime_ns == first
    assert run.network_def.calls == 1  # v1 only: 4 axial slices, one forward
    assert (tmp_path / "out" / "v1" / "v1_anomaly.seg.nrrd").exists()
    stub_inference(tmp_path, tmp_path / "in", tmp_path / "out", overwrite=True)
    assert os.stat(map_file).st_mtime_ns != first
    second = os.stat(map_file).st_mtime_ns
    stub_inference(tmp_path, tmp_path / "in", tmp_path / "out", threshold=0.9)
    assert os.stat(map_file).st_mtime_ns != second
    assert json.load(open(tmp_path / "out" / "v0" / "v0_case.json"))["threshold"] == 0.9
    assert len(scores(tmp_path / "out")) == 2


def test_a_case_failing_half_way_leaves_no_outputs_and_is_reported(tmp_path):
    write_volume(tmp_path / "in" / "good.nii.gz")
    # this series has no StudyInstanceUID: it reads as a volume and its NIfTI outputs are written, but its
    # DICOM SEG (the last writer) cannot reference a study
    series = write_dicom_series(tmp_path / "in" / "no_study", brain_like_volume((3, 12, 10)))
    for file in series.iterdir():
        ds = pydicom.dcmread(str(file))
        del ds.StudyInstanceUID
        ds.save_as(str(file))
    with pytest.raises(RuntimeError) as error:
        stub_inference(tmp_path, tmp_path / "in", tmp_path / "out")
    cause = root_cause(error.value)
    assert isinstance(cause, CaseFailuresError)
    assert "1 of 2 case(s) failed" in str(cause) and str(series) in str(cause)
    assert sorted(os.listdir(tmp_path / "out")) == ["cases.json", "good", "scores.csv"]
    assert list(scores(tmp_path / "out")) == ["good"]


@pytest.mark.slow
def test_two_runs_at_the_same_time_into_one_folder_end_with_one_index(trained, tmp_path):
    for run in ("a", "b"):
        for i in range(2):
            write_volume(tmp_path / run / f"scan{i}.nii.gz", seed=ord(run) + i)  # same names, other sources
    commands = [
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            layered(INFERENCE),
            "--input",
            str(tmp_path / run),
            "--output_dir",
            str(tmp_path / "out"),
            "--ckpt_dir",
            trained,
            "--device",
            "cpu",
        ]
        for run in ("a", "b")
    ]
    processes = [
        subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    folders = sorted(e for e in os.listdir(tmp_path / "out") if os.path.isdir(tmp_path / "out" / e))
    assert len(folders) == 4
    assert sorted(scores(tmp_path / "out")) == folders
    sources = {c["source"] for c in json.load(open(tmp_path / "out" / "cases.json")).values()}
    assert sources == {str(tmp_path / run / f"scan{i}.nii.gz") for run in ("a", "b") for i in range(2)}


# --- torchrun ---------------------------------------------------------------------------------------------


def torchrun(configs, *overrides):
    command = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "monai.bundle", "run"]
    return cli([*command, "--config_file", str(configs), *overrides], timeout=600)


@pytest.mark.slow
def test_torchrun_shards_cases_over_two_processes_like_one_process(trained, tmp_path):
    for i in range(4):
        write_volume(tmp_path / "in" / f"v{i}.nii.gz", shape=(16, 18, 3 + i), seed=i)
    common = ["--input", str(tmp_path / "in"), "--ckpt_dir", trained]
    result = torchrun(layered(INFERENCE, MULTI_GPU_INFERENCE), *common, "--output_dir", str(tmp_path / "ddp"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the reference: one process with torchrun's one thread per worker, so float sums run alike
    single = cli(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            layered(INFERENCE),
            *common,
            "--output_dir",
            str(tmp_path / "one"),
            "--device",
            "cpu",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert list(scores(tmp_path / "ddp")) == ["v0", "v1", "v2", "v3"]
    assert scores(tmp_path / "ddp") == scores(tmp_path / "one")
    for i in range(4):
        ddp = nib.load(str(tmp_path / "ddp" / f"v{i}" / f"v{i}_anomaly_map.nii.gz")).get_fdata()
        one = nib.load(str(tmp_path / "one" / f"v{i}" / f"v{i}_anomaly_map.nii.gz")).get_fdata()
        np.testing.assert_array_equal(ddp, one)
    written = {i: os.stat(tmp_path / "ddp" / f"v{i}" / f"v{i}_case.json").st_mtime_ns for i in range(4)}
    again = torchrun(layered(INFERENCE, MULTI_GPU_INFERENCE), *common, "--output_dir", str(tmp_path / "ddp"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 of 4 case(s) already complete" in again.stdout + again.stderr
    assert {i: os.stat(tmp_path / "ddp" / f"v{i}" / f"v{i}_case.json").st_mtime_ns for i in range(4)} == written
    assert len(scores(tmp_path / "ddp")) == 4


def flat_numbers(report, prefix=""):
    """A metrics.json as {"branches/fused/pixel_auroc": value, ...}; text entries kept as they are."""
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.slow
def test_torchrun_evaluation_gives_the_metrics_of_one_process(trained, demo_dir, tmp_path):
    values = {"dataset_dir": demo_dir, "ckpt_dir": trained, "clip_model": "mediclip-tiny", "clip_pretrained": "none"}
    overrides = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    result = torchrun(
        layered(INFERENCE, EVALUATE, MULTI_GPU_INFERENCE), *overrides, "--output_dir", str(tmp_path / "ddp")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single = cli(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            layered(INFERENCE, EVALUATE),
            *overrides,
            "--output_dir",
            str(tmp_path / "one"),
            "--device",
            "cpu",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = json.load(open(tmp_path / "ddp" / "eval" / "metrics.json"))
    one = json.load(open(tmp_path / "one" / "eval" / "metrics.json"))
    # the same numbers, up to the rounding of sums taken in another order (pixels gathered rank by rank)
    ddp, one = flat_numbers(ddp), flat_numbers(one)
    assert ddp.keys() == one.keys() and ddp["n_cases"] == 21
    for key, value in ddp.items():
        assert value == (pytest.approx(one[key], rel=1e-12) if isinstance(value, float) else one[key]), key
    rows = lambda run: sorted(csv.reader(open(tmp_path / run / "eval" / "cases.csv")))  # noqa: E731
    assert rows("ddp") == rows("one")


# --- evaluation against known maps ----------------------------------------------------------------------


def _image(rng, shape, lesion):
    """Intensities on a 1/64 grid with exact 0s (border) and 1s, so robust scaling leaves them as they are;
    the lesion is brighter on average, not perfectly."""
    image = np.round(rng.uniform(0.1, 0.8, shape) * 64) / 64
    image[lesion] = np.round(rng.uniform(0.4, 1.0, int(lesion.sum())) * 64) / 64
    image[:2] = 0.0
    image.flat[rng.choice(image.size, image.size // 40, replace=False)] = 1.0
    return image.astype(np.float32)


def _blob(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return (((grid - np.reshape(centre, (-1,) + (1,) * len(shape))) ** 2).sum(0)) <= radius**2


def write_known_test_set(folder, soft_mask=True):
    """32 x 32 images (the stub's input size) and one 32 x 32 x 4 volume, masks, a soft mask."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(6):
        abnormal = i % 2
        lesion = _blob((32, 32), (8 + 3 * i, 20 - i), 4) if abnormal else np.zeros((32, 32), bool)
        nib.save(nib.Nifti1Image(_image(rng, (32, 32), lesion), np.eye(4)), str(folder / f"img{i}.nii.gz"))
        entry = {"image": f"img{i}.nii.gz", "abnormal": abnormal}
        if abnormal or i == 2:
            mask = lesion.astype(np.float32)
            if soft_mask and i == 3:
                mask[lesion] = 0.7  # soft: binarised at 0.5, with a warning
                mask[_blob((32, 32), (17, 17), 1) & lesion] = 1.0
            nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / f"img{i}_mask.nii.gz"))
            entry["label"] = f"img{i}_mask.nii.gz"
        entries.append(entry)
    nib.save(
        nib.Nifti1Image(_image(rng, (32, 32), np.zeros((32, 32), bool)), np.eye(4)), str(folder / "no_mask.nii.gz")
    )
    entries.append({"image": "no_mask.nii.gz", "abnormal": 1})  # abnormal without a mask: image metrics only
    lesion = _blob((32, 32, 4), (15, 12, 2), 3)
    nib.save(nib.Nifti1Image(_image(rng, (32, 32, 4), lesion), np.eye(4)), str(folder / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8), np.eye(4)), str(folder / "vol_mask.nii.gz"))
    entries.append({"image": "vol.nii.gz", "label": "vol_mask.nii.gz"})
    (folder / "datalist.json").write_text(json.dumps({"training": entries[:1], "test": entries}))
    return folder / "datalist.json"


def stub_evaluation(tmp_path, datalist):
    run = workflow(
        layers(INFERENCE, EVALUATE),
        "eval",
        datalist=str(datalist),
        output_dir=str(tmp_path / "runs"),
        ckpt_dir=str(tmp_path / "models"),
        network_def=IntensityMapNetwork(),
        device="cpu",
        num_workers=0,
        threshold=0.5,  # the stub carries no calibrated threshold
    )
    run.initialize()
    run.run()
    run.finalize()
    return tmp_path / "runs" / "eval"


def test_evaluation_metrics_match_scikit_learn_on_known_maps(tmp_path, capsys):
    datalist = write_known_test_set(tmp_path / "data")
    eval_dir = stub_evaluation(tmp_path, datalist)
    assert "img3_mask.nii.gz: soft or multi-valued mask" in capsys.readouterr().out

    # the truth, from the files alone: the stub's map is the image itself
    truths, image_scores, pixel_maps, pixel_masks, slices = [], [], [], [], []
    for entry in json.load(open(datalist))["test"]:
        image = nib.load(str(tmp_path / "data" / entry["image"])).get_fdata()
        mask = nib.load(str(tmp_path / "data" / entry["label"])).get_fdata() >= 0.5 if "label" in entry else None
        truths.append(entry.get("abnormal", int(mask.any()) if mask is not None else 0))
        image_scores.append(image.max())
        if mask is None and truths[-1] == 0:
            mask = np.zeros(image.shape, bool)
        if mask is not None:
            pixel_maps.append(image.ravel())
            pixel_masks.append(mask.ravel())
            slices += (
                [(mask[..., k], image[..., k]) for k in range(image.shape[2])] if image.ndim == 3 else [(mask, image)]
            )
    metrics = json.load(open(eval_dir / "metrics.json"))
    assert metrics["n_cases"] == 8 and metrics["n_abnormal"] == sum(truths)
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(truths, image_scores), abs=1e-6)
    best_f1 = max(f1_score(truths, np.array(image_scores) >= t) for t in np.unique(image_scores))
    assert metrics["image_max_f1"] == pytest.approx(best_f1, abs=1e-6)
    assert metrics["pixel_auroc"] == pytest.approx(
        roc_auc_score(np.concatenate(pixel_masks), np.concatenate(pixel_maps)), abs=1e-6
    )
    masks, maps = np.stack([m for m, _ in slices]), np.stack([s for _, s in slices])
    assert metrics["pixel_aupro"] == pytest.approx(_naive_aupro(masks, maps), abs=1e-4)
    assert 0.5 < metrics["pixel_auroc"] < 1.0 and 0.0 < metrics["image_auroc"] <= 1.0
    cases = list(csv.DictReader(open(eval_dir / "cases.csv")))
    assert [c["name"] for c in cases] == [f"img{i}" for i in range(6)] + ["no_mask", "vol"]
    assert [float(c["score"]) for c in cases] == pytest.approx(image_scores, abs=1e-5)
    assert cases[-1]["max_slice"] != "" and cases[0]["max_slice"] == ""
    for name in ("roc.png", "montage.png"):
        assert (eval_dir / name).stat().st_size > 0


def test_evaluation_refuses_a_mask_that_binarising_would_empty(tmp_path):
    datalist = write_known_test_set(tmp_path / "data", soft_mask=False)
    faint = tmp_path / "data" / "img1_mask.nii.gz"
    image = nib.load(str(faint))
    nib.save(nib.Nifti1Image(image.get_fdata().astype(np.float32) * 0.3, image.affine), str(faint))
    with pytest.raises(RuntimeError) as error:
        stub_evaluation(tmp_path, datalist)
    cause = root_cause(error.value)
    assert isinstance(cause, CaseFailuresError) and f"{faint}: every non-zero mask value is below 0.5" in str(cause)
    assert not (tmp_path / "runs" / "eval" / "metrics.json").exists()
