"""Conversion of the paper's reference split files into datalists (scripts/prepare_dataset.py)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mediclip_monai.data.datalists import DataError, check_entries, load_datalist
from mediclip_monai.data.public_datasets import convert_reference_split

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_dataset.py"


def _picture(path: Path, value: int = 100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 7), value, np.uint8)).save(path)


def _reference_layout(root: Path, n_train: int = 5) -> Path:
    """A tiny BUSI-like dataset: JSON lines under samples/, pictures under images/."""
    train, test = [], []
    for i in range(n_train):
        _picture(root / "images" / "train" / "normal" / f"normal_{i}.png")
        # the reference lists paths relative to images/; accept the images/ prefix too
        prefix = "images/" if i == 0 else ""
        train.append({"filename": f"{prefix}train/normal/normal_{i}.png", "label": 0, "clsname": "busi"})
    _picture(root / "images" / "test" / "normal" / "normal_9.png")
    _picture(root / "images" / "test" / "abnormal" / "benign_0.png", 200)
    _picture(root / "images" / "test" / "ground_true" / "benign_mask_0.png", 255)
    test.append({"filename": "test/normal/normal_9.png", "label": 0, "clsname": "busi"})
    test.append(
        {
            "filename": "test/abnormal/benign_0.png",
            "label": 1,
            "clsname": "busi",
            "mask": "test/ground_true/benign_mask_0.png",
        }
    )
    (root / "samples").mkdir(parents=True, exist_ok=True)
    (root / "samples" / "train.json").write_text("\n".join(json.dumps(r) for r in train) + "\n\n")
    (root / "samples" / "test.json").write_text("\n".join(json.dumps(r) for r in test) + "\n")
    return root


def test_convert_reference_split_writes_a_loadable_datalist(tmp_path):
    root = _reference_layout(tmp_path / "busi")
    out = tmp_path / "lists" / "busi.json"
    convert_reference_split(root, out)
    training = load_datalist(out, "training")
    assert len(training) == 5
    assert training[0]["image"] == str(root / "images" / "train" / "normal" / "normal_0.png")
    test = load_datalist(out, "test")
    assert [t["abnormal"] for t in test] == [0, 1]
    assert "label" not in test[0]
    assert test[1]["label"] == str(root / "images" / "test" / "ground_true" / "benign_mask_0.png")
    check_entries(training + test, keys=("image", "label"))
    raw = json.loads(out.read_text())
    assert "validation" not in raw
    assert not Path(raw["training"][0]["image"]).is_absolute()  # relative to the datalist's folder


def test_validation_fraction_is_a_seeded_hold_out_of_training(tmp_path):
    root = _reference_layout(tmp_path / "busi", n_train=10)
    a = convert_reference_split(root, tmp_path / "a.json", val_fraction=0.2, seed=1)
    b = convert_reference_split(root, tmp_path / "b.json", val_fraction=0.2, seed=1)
    assert len(a["validation"]) == 2 and len(a["training"]) == 8
    assert a["validation"] == b["validation"]
    held_out = {e["image"] for e in a["validation"]}
    assert held_out.isdisjoint(e["image"] for e in a["training"])
    assert all(e["abnormal"] == 0 for e in a["validation"])


def test_missing_files_are_listed_together(tmp_path):
    root = _reference_layout(tmp_path / "busi")
    (root / "images" / "train" / "normal" / "normal_3.png").unlink()
    (root / "images" / "test" / "ground_true" / "benign_mask_0.png").unlink()
    with (root / "samples" / "test.json").open("a") as f:
        f.write("{broken json\n")
    with pytest.raises(DataError) as info:
        convert_reference_split(root, tmp_path / "out.json")
    message = str(info.value)
    assert message.startswith("3 problems")
    assert "normal_3.png: file not found (listed in train.json line 4)" in message
    assert "benign_mask_0.png: file not found" in message
    assert "test.json line 3: not valid JSON" in message
    assert not (tmp_path / "out.json").exists()


def test_cli(tmp_path, capsys):
    root = _reference_layout(tmp_path / "busi", n_train=10)
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "datalist.json"
    assert main([str(root), "--output", str(out), "--val-fraction", "0.2"]) == 0
    assert "8 training, 2 validation, 2 test (1 abnormal, 1 with masks)" in capsys.readouterr().out
    assert len(load_datalist(out, "validation")) == 2
    assert main([str(tmp_path / "nowhere"), "--output", str(out)]) == 1
    assert "split file not found" in capsys.readouterr().err
