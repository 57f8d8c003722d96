"""The decision rules of MediCLIP outputs: image score, mask, verdict, and their calibration from normals."""
