"""Other libraries' log messages that are not true or not useful here, kept out of the user's output.

- open_clip logs every step of building a model (INFO, on the root logger), and warns "No pretrained
  weights loaded ... initialized randomly" for a random-weight backbone, which the user chose
  (``--clip_pretrained none``) or which inference rebuilds exactly as it was trained.
- MONAI's ``LoadImage`` sets up every reader it knows, and its nvImageCodec DICOM reader warns, in every
  reading process, that this optional GPU decoder is not installed; DICOM is read with pydicom, as
  intended.

Only those records are dropped, only while the code that causes them runs; every warning of another
kind still shows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator

__all__ = ["quiet_open_clip", "quiet_reader_setup"]

# The module whose logger warns that nvImageCodec is missing; and the start of MONAI's UserWarning about it.
NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"
RANDOM_WEIGHTS_WARNING = "No pretrained weights loaded for model"


class _Drop(logging.Filter):
    def __init__(self, drop: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record)


@contextlib.contextmanager
def _dropping(logger: logging.Logger, drop: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Inside the block, records logged on ``logger`` itself for which ``drop`` is true are not shown."""
    dropper = _Drop(drop)
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _from_open_clip(record: logging.LogRecord) -> bool:
    import open_clip

    if not record.pathname.startswith(os.path.dirname(open_clip.__file__)):
        return False
    return record.levelno < logging.WARNING or record.getMessage().startswith(RANDOM_WEIGHTS_WARNING)


def quiet_open_clip() -> contextlib.AbstractContextManager:
    """Inside the block, open_clip's progress messages and its random-weights warning are not shown."""
    return _dropping(logging.getLogger(), _from_open_clip)  # open_clip logs with logging.info(...)


@contextlib.contextmanager
def quiet_reader_setup() -> Iterator[None]:
    """Inside the block, MONAI's readers are set up without the nvImageCodec warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NVIMGCODEC_WARNING)
        with _dropping(logging.getLogger(NVIMGCODEC_LOGGER), lambda record: "nvImageCodec" in record.getMessage()):
            yield
