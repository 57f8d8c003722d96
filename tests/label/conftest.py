"""The bundle's trained tiny model, for the MONAI Label tests too."""

from ..bundle.conftest import demo_dir, trained  # noqa: F401
