"""Data layer: datalists, image reading and slicing, the embedded demo set, public dataset converters.

- `datalists`: Decathlon-style datalist reading, k-shot sampling, file checks, `DataError`.
- `loading`: `read_image` (NIfTI, DICOM file or series, PNG/JPEG, ...), intensity scaling, axial
  slicing of volumes and its inverse, and the 2D training inputs.
- `demo`: the MNI152-based demo set built on first use.
- `resolve`: which datalist a run reads (given file, dataset folder, demo set, folder of scans).
- `cases`: the cases of an inference or evaluation run and their unique names.
- `public_datasets`: conversion of the paper's datasets (reference split files) to datalists.
"""

from mediclip_monai.data.datalists import DataError, check_entries, load_datalist, sample_k_shot
from mediclip_monai.data.demo import build_demo_data, ensure_demo_data, rebuild_demo_data
from mediclip_monai.data.loading import (
    axial_axis,
    case_name,
    is_image_path,
    load_training_slices,
    read_image,
    scale_intensity,
    slices_to_volume,
    volume_to_slices,
)
from mediclip_monai.data.public_datasets import convert_reference_split
from mediclip_monai.data.resolve import resolve_datalist

__all__ = [
    "DataError",
    "axial_axis",
    "build_demo_data",
    "case_name",
    "check_entries",
    "convert_reference_split",
    "ensure_demo_data",
    "is_image_path",
    "load_datalist",
    "load_training_slices",
    "read_image",
    "rebuild_demo_data",
    "resolve_datalist",
    "sample_k_shot",
    "scale_intensity",
    "slices_to_volume",
    "volume_to_slices",
]
