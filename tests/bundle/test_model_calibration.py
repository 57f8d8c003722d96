"""End of training (mediclip_monai.workflows.calibrate): memory bank and calibration written into model.pt,
rebuilt by the documented `calibrate` run, bounded for volume shots."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mediclip_monai.networks import CheckpointError, load_mediclip
from mediclip_monai.networks.extra_state import extra_state
from mediclip_monai.workflows.calibrate import bank_slice_indices

from .conftest import TRAIN, as_cli_overrides, cli, layered, root_cause, run_workflow, small_training

TINY_PATCHES_PER_SLICE = 16 * 16  # mediclip-tiny: 224 px, 14 px patches


def test_bank_slices_are_evenly_spaced_within_each_shot():
    shot_slices = [[0], [1, 2, 3, 4, 5, 6, 7], [8, 9]]
    assert bank_slice_indices(shot_slices, max_slices=3) == [0, 1, 4, 7, 8, 9]
    assert bank_slice_indices(shot_slices, max_slices=1) == [0, 4, 8]


def test_training_stores_bank_and_calibration_and_the_calibrate_run_rebuilds_them(demo_dir, tmp_path):
    values = small_training(demo_dir, tmp_path)
    run_workflow(TRAIN, **values)
    path = tmp_path / "models" / "model.pt"
    trained = torch.load(path, map_location="cpu", weights_only=True)
    # 4 two-dimensional shots: every patch kept (4 x 256 < the 4096 bound), 3 layers of width 96
    assert trained["memory_bank.patches"].shape == (3, 4 * TINY_PATCHES_PER_SLICE, 96)
    calibration = extra_state(trained)["calibration"]
    # the default branch is the best on the calibration set (held-out normals with anomalies of unseen kinds)
    choice = calibration["choice"]["pixel_auroc"]
    assert calibration["default_branch"] == max(choice, key=choice.get)
    assert calibration["memory_bank"] == {"size": 1024, "shots": 4, "slices": 4, "max_slices_per_shot": 8, "seed": 0}
    normals = calibration["calibration_set"]["normal_slices"]
    assert normals >= 8 and calibration["calibration_set"]["anomalous_slices"] == 2 * normals
    assert calibration["validation"] == {"n_images": 3 * normals, "n_abnormal": 2 * normals}
    # the image-level rule, with the shots' global descriptors it compares with (one per bank slice)
    level = calibration["image_level"]
    assert level["map_branch"] == calibration["default_branch"] and sum(level["weights"].values()) == pytest.approx(1)
    assert trained["shot_embeddings.embeddings"].shape[0] == 4
    model = load_mediclip(str(path))
    assert model.anomaly_branch == calibration["default_branch"]
    with torch.no_grad():
        probabilities = model(torch.randn(2, 3, 224, 224))
    assert probabilities.shape == (2, 2, 224, 224)
    assert 0 <= float(probabilities.min()) <= float(probabilities.max()) <= 1

    # an existing model.pt without bank and calibration gets exactly the same ones from the documented command
    built_after_training = ("memory_bank.", "shot_embeddings.")
    stripped = {key: value for key, value in trained.items() if not key.startswith(built_after_training)}
    stripped["_extra_state"] = {**extra_state(trained), "calibration": None}
    torch.save(stripped, path)
    assert not load_mediclip(str(path)).memory_bank.is_built
    result = cli(["-m", "monai.bundle", "run", "calibrate", "--config_file", layered(TRAIN), *as_cli_overrides(values)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "memory bank and calibration stored" in result.stdout + result.stderr
    rebuilt = torch.load(path, map_location="cpu", weights_only=True)
    assert rebuilt.keys() == trained.keys()
    for key in trained:
        if key != "_extra_state":
            assert torch.equal(rebuilt[key], trained[key]), key
    assert extra_state(rebuilt) == extra_state(trained)
    assert [name for name in os.listdir(path.parent) if name.startswith(".")] == []  # no temporary file left


def test_calibrate_without_a_trained_model_names_the_file_and_writes_nothing(demo_dir, tmp_path):
    with pytest.raises(RuntimeError) as error:
        run_workflow(TRAIN, run_id="calibrate", **small_training(demo_dir, tmp_path))
    cause = root_cause(error.value)
    assert isinstance(cause, CheckpointError)
    assert str(tmp_path / "models" / "model.pt") in str(cause) and "train first" in str(cause)
    assert not (tmp_path / "models").exists()


def write_volume_shots(folder, n_volumes=5, slices_per_volume=6):
    """Normal 3D volumes cut from the MNI152 template (2 mm, in-plane 4 mm): axial slabs, one volume each."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    data = np.asarray(template.get_fdata(), dtype=np.float32)[::2, ::2]
    affine = template.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n_volumes):
        first = 30 + i * slices_per_volume
        slab_affine = affine.copy()
        slab_affine[:3, 3] = (affine @ np.array([0, 0, first, 1.0]))[:3]
        name = f"volume_{i}.nii.gz"
        nib.save(nib.Nifti1Image(data[:, :, first : first + slices_per_volume], slab_affine), str(folder / name))
        entries.append({"image": name})
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": entries}))
    return str(datalist)


def test_volume_shots_build_a_bank_bounded_in_slices_and_patches(demo_dir, tmp_path):
    datalist = write_volume_shots(tmp_path / "volumes")
    bounds = {"memory_bank_size": 300, "memory_bank_slices": 2}
    values = small_training(demo_dir, tmp_path, datalist=datalist, k_shot=3, epochs=1, batch_size=8, **bounds)
    workflow = run_workflow(TRAIN, **values)
    data = workflow.parser.get_parsed_content("data")
    assert [len(slices) for slices in data.shot_slices] == [6, 6, 6]  # every slice of a volume trains
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    # 3 volumes x 2 evenly spaced slices x 256 patches = 1536 candidates, thinned to the 300-patch bound
    assert model["memory_bank.patches"].shape == (3, 300, 96)
    calibration = extra_state(model)["calibration"]
    assert calibration["memory_bank"]["slices"] == 3 * 2
    assert load_mediclip(str(tmp_path / "models" / "model.pt")).anomaly_branch == calibration["default_branch"]
