"""What a calibration rests on: normal images held out of the shots, or none at all; and a calibration that
replaces another keeps the previous model.pt beside it and says what each was fitted on."""

import json
import shutil

import pytest
import torch

from mediclip_monai.networks.extra_state import extra_state
from mediclip_monai.workflows.calibrate import previous_model_path

from .conftest import TRAIN, as_cli_overrides, cli, layered, small_training


def bundle_cli(run_id, values):
    result = cli(["-m", "monai.bundle", "run", run_id, "--config_file", layered(TRAIN), *as_cli_overrides(values)])
    return result, result.stdout + result.stderr


def datalist_of(tmp_path, demo_dir, n_images, **sections):
    images = json.load(open(f"{demo_dir}/datalist.json"))["training"][:n_images]
    entries = [{"image": f"{demo_dir}/{entry['image']}"} for entry in images]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": entries, **sections}))
    return str(path)


def calibration_of(path):
    return extra_state(torch.load(path, map_location="cpu", weights_only=True))["calibration"]


@pytest.mark.slow
def test_a_single_normal_image_trains_an_uncalibrated_model_and_calibrate_refuses(demo_dir, tmp_path):
    values = small_training(demo_dir, tmp_path, datalist=datalist_of(tmp_path, demo_dir, 1), k_shot=0, epochs=1)
    result, output = bundle_cli("training", values)
    assert result.returncode == 0, output[-3000:]
    model = tmp_path / "models" / "model.pt"
    assert f"{model}: not calibrated: no normal image is held out of the shots" in output
    assert calibration_of(model) is None  # inference then asks for --threshold instead of masking everything
    before = model.read_bytes()

    result, output = bundle_cli("calibrate", values)
    assert result.returncode != 0 and "Traceback" not in output
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: {model}: not calibrated, left as it is: no normal image is held out of the shots")
    assert model.read_bytes() == before
    assert not (tmp_path / "models" / "model.previous.pt").exists()


@pytest.mark.slow
def test_when_every_image_is_a_shot_a_quarter_is_held_out_and_a_recalibration_keeps_the_previous_model(
    demo_dir, tmp_path
):
    datalist = datalist_of(tmp_path, demo_dir, 8)
    values = small_training(demo_dir, tmp_path, datalist=datalist, k_shot=0, epochs=1)
    result, output = bundle_cli("training", values)
    assert result.returncode == 0, output[-3000:]
    assert "2 of the 8 images are held out as normal validation images" in output and "6 are shots" in output
    model = tmp_path / "models" / "model.pt"
    calibration = calibration_of(model)
    assert calibration["memory_bank"]["shots"] == 6  # the bank holds none of the images it is calibrated on
    # the calibration set: the 2 held-out normals, each also twice with an anomaly of an unseen kind
    assert calibration["validation"] == {"n_images": 6, "n_abnormal": 4}
    trained = model.read_bytes()

    # Calibrated again on fewer normals (a 'validation' section of one image): said, and undoable.
    one = json.load(open(datalist))["training"][:1]
    values["datalist"] = datalist_of(tmp_path, demo_dir, 8, validation=one)
    result, output = bundle_cli("calibrate", values)
    assert result.returncode == 0, output[-3000:]
    backup = previous_model_path(str(model))
    assert backup == str(tmp_path / "models" / "model.previous.pt")
    assert open(backup, "rb").read() == trained
    assert (
        f"{model}: replacing its calibration (fitted on 2 normal validation slices) with one fitted on 1; the "
        f"previous model is kept as {backup} (rename it to model.pt to go back); the new one rests on fewer normals"
    ) in output
    assert calibration_of(model)["validation"] == {"n_images": 3, "n_abnormal": 2}
    shutil.move(backup, model)  # going back is a rename
    assert calibration_of(model) == calibration
