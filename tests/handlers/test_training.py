"""The trainer's resume handlers: the newest readable resume checkpoint, stale ones removed."""

import os

import pytest
import torch

from mediclip_monai.errors import ConfigValueError
from mediclip_monai.handlers.training import StaleResumeCheckpointRemover, latest_checkpoint


def _resume_file(folder, epoch, content=None):
    path = folder / f"resume_checkpoint_epoch={epoch}.pt"
    if content is None:
        torch.save({"epoch": torch.tensor(epoch)}, path)
    else:
        path.write_bytes(content)
    return path


def test_resume_uses_the_newest_readable_checkpoint(tmp_path):
    for epoch in (2, 10, 9):
        _resume_file(tmp_path, epoch)
    assert latest_checkpoint(str(tmp_path)).endswith("epoch=10.pt")
    whole = (tmp_path / "resume_checkpoint_epoch=10.pt").read_bytes()
    _resume_file(tmp_path, 11, whole[: len(whole) // 2])  # killed while writing epoch 11
    assert latest_checkpoint(str(tmp_path)).endswith("epoch=10.pt")
    with pytest.raises(ConfigValueError, match=f"--resume true: {tmp_path / 'empty'} holds no readable resume"):
        latest_checkpoint(str(tmp_path / "empty"))


def test_stale_resume_checkpoints_go_once_the_new_one_is_written(tmp_path):
    from ignite.engine import Engine
    from ignite.handlers.checkpoint import CheckpointEvents

    for epoch in (1, 2, 7):  # 7: left by an earlier, longer run in the same ckpt_dir
        _resume_file(tmp_path, epoch)
    (tmp_path / "model.pt").write_bytes(b"the best model")
    engine = Engine(lambda engine, batch: None)
    StaleResumeCheckpointRemover(str(tmp_path)).attach(engine)
    engine.state.epoch = 3
    assert sorted(os.listdir(tmp_path)) == ["model.pt", *(f"resume_checkpoint_epoch={e}.pt" for e in (1, 2, 7))]
    _resume_file(tmp_path, 3)
    engine.fire_event(CheckpointEvents.SAVED_CHECKPOINT)
    assert sorted(os.listdir(tmp_path)) == ["model.pt", "resume_checkpoint_epoch=3.pt"]
    assert (tmp_path / "model.pt").read_bytes() == b"the best model"
