"""Shared test fixtures: the tiny random-weight backbone, so nothing ever downloads."""

import logging

import pytest

TINY = {"clip_model": "mediclip-tiny", "clip_pretrained": "none"}

# open_clip warns on every random-weight build; the tests build many on purpose.
logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_kwargs():
    return dict(TINY)
