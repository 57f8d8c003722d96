"""The embedded demo set (mediclip_monai.data.demo): built once per module into a temporary folder."""

import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from mediclip_monai.data.datalists import DataError, check_entries, load_datalist
from mediclip_monai.data.demo import ensure_demo_data
from mediclip_monai.data.loading import load_training_slices, read_image, volume_to_slices

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_demo_data.py"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_parent") / "demo"
    return Path(ensure_demo_data(root))


def test_demo_datalist_is_complete_and_every_file_loads(demo):
    assert demo.name == "datalist.json" and demo.is_file()
    training = load_datalist(demo, "training")
    validation = load_datalist(demo, "validation")
    test = load_datalist(demo, "test")
    assert 20 <= len(training) <= 32 and 6 <= len(validation) <= 12
    check_entries(training + validation)
    check_entries(test + load_datalist(demo, "test_dicom"), keys=("image", "label"))
    # paths in the file are relative, so the folder can move
    raw = json.loads(demo.read_text())
    assert all(not os.path.isabs(e["image"]) for section in ("training", "test") for e in raw[section])

    flat = [t for t in test if read_image(t["image"]).ndim == 3]
    volumes = [t for t in test if t not in flat]
    assert len(volumes) == 1 and volumes[0]["abnormal"] == 1
    assert sum(t["abnormal"] for t in flat) == len(flat) // 2
    for t in flat:  # every abnormal slice has a lesion mask, every normal one an empty mask
        mask = read_image(t["label"])
        assert (float(mask.sum()) > 20) == bool(t["abnormal"])
        assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    volume_mask = read_image(volumes[0]["label"])
    assert volume_mask.ndim == 4 and float(volume_mask.sum()) > 50


def test_demo_images_look_like_brain_slices(demo):
    training = load_datalist(demo, "training")
    slices = load_training_slices(training, image_size=64)
    assert len(slices) == len(training)
    images = torch.stack([s["image"] for s in slices])
    assert images.shape[1:] == (1, 64, 64)
    foreground = (images > 0.1).float().mean(dim=(1, 2, 3))
    assert float(foreground.min()) > 0.15 and float(foreground.max()) < 0.9
    # variation between shots: no two training slices are the same picture
    flat = images.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert float(distances.min()) > 1.0


def test_demo_volume_as_nifti_and_as_dicom_gives_the_same_slices(demo):
    nifti = read_image(demo.parent / "test" / "brain_volume.nii.gz")
    dicom = read_image(demo.parent / "test" / "brain_volume_dicom")
    assert nifti.shape == dicom.shape and nifti.ndim == 4
    a, b = volume_to_slices(nifti, 0.05), volume_to_slices(dicom, 0.05)
    assert [k for k, _ in a] == [k for k, _ in b] and len(a) > 20
    for (_, sa), (_, sb) in zip(a, b):
        torch.testing.assert_close(sa.as_tensor(), sb.as_tensor(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(sa.affine.numpy(), sb.affine.numpy(), atol=1e-3)
    # demo 2D slices share the volume's display view: anterior at the top of every slice
    test_slice = read_image(load_datalist(demo, "test")[0]["image"])
    assert test_slice.affine[1, 0] < 0  # one row down moves posterior


def test_ensure_is_a_no_op_when_the_demo_exists(demo):
    stamp = demo.stat().st_mtime_ns
    assert ensure_demo_data(demo.parent) == str(demo)
    assert demo.stat().st_mtime_ns == stamp
    assert not [p for p in demo.parent.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    readme = (demo.parent / "README.txt").read_text()
    assert "not a benchmark" in readme and "Louis Collins" in readme
    size = sum(p.stat().st_size for p in demo.parent.rglob("*") if p.is_file())
    assert size < 10e6


def test_ensure_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="holds no datalist.json"):
        ensure_demo_data(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_script_leaves_an_existing_demo_alone(demo, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    stamp = demo.stat().st_mtime_ns
    assert main(["--output", str(demo.parent)]) == 0
    assert "exists" in capsys.readouterr().out
    assert demo.stat().st_mtime_ns == stamp
