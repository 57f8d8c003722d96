"""MONAI Label app serving the MediCLIP bundle: anomaly segments for 3D Slicer's MONAI Label module.

The app folder is this package folder: ``monailabel start_server --app <this folder> --studies DIR``
(``scripts/run_monailabel.sh`` does it). ``main.py`` holds the app class, ``infer_task.py`` the
anomaly inference, ``train_task.py`` the few-shot training on studies the user marked normal.

Nothing here is imported by the rest of the package: MONAI Label (``monailabel==0.8.5``) lives in its
own environment (``scripts/setup_monailabel_env.sh``), because it needs pydicom 2.
"""

from mediclip_monai.errors import require_package

require_package(
    "monailabel",
    "The MONAI Label app (mediclip_monai.label)",
    "make its environment with `bash scripts/setup_monailabel_env.sh` and start the server with "
    "`bash scripts/run_monailabel.sh STUDIES_DIR`",
)
