"""train.json's own parts for the benchmarks, parsed from the bundle's configs as a run parses them.

The benchmarks measure what a run does: their pipelines and loaders are train.json's (``train::dataloader``,
``validate::preprocessing``...), never rebuilt here, so they cannot drift from the bundle.
"""

import os

from monai.bundle import ConfigParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "bundle", "configs")
TRAIN = os.path.join(CONFIGS, "train.json")


def train_recipe(**overrides) -> ConfigParser:
    """train.json's parser with ``overrides`` (train.json keys, as on the command line; ``network_def`` may be
    a network object, whose contract the pipelines then follow); read its parts with ``get_parsed_content``."""
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": os.path.join(REPO, "bundle"), **overrides})
    return parser
