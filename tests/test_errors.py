"""User errors and how an uncaught one is shown (mediclip_monai.errors): the reason is the last line."""

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from mediclip_monai.errors import (
    ConfigValueError,
    DataError,
    MediclipError,
    MissingPackageError,
    OutputError,
    reason_of,
    require_package,
    writing_into,
)

# A script that fails the way MONAI's config runner does: the real error wrapped twice.
WRAPPED = textwrap.dedent(
    """
    import mediclip_monai.readable_errors
    from mediclip_monai.errors import DataError

    def read():
        try:
            raise OSError("zlib: invalid stored block lengths")
        except OSError as e:
            raise {error}("/data/scan_07.nii.gz: not a readable NIfTI image") from e

    try:
        try:
            read()
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $prepare(@datalist)") from e
    except Exception as e:
        raise RuntimeError("Failed to instantiate component 'train#dataset'") from e
    """
)


def run_script(code, env=None):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


def test_data_error_is_still_importable_from_datalists_and_is_a_value_error():
    from mediclip_monai.data.datalists import DataError as FromDatalists

    assert FromDatalists is DataError
    assert issubclass(DataError, MediclipError) and issubclass(DataError, ValueError)
    assert issubclass(ConfigValueError, MediclipError) and issubclass(MissingPackageError, ImportError)


def test_reason_is_the_outermost_user_error_else_the_root_cause():
    def chained(inner):
        try:
            try:
                raise inner
            except Exception as e:
                raise RuntimeError("Failed to evaluate ConfigExpression") from e
        except RuntimeError as wrapper:
            return wrapper

    data = DataError("scan.nii.gz: file not found")
    data.__cause__ = OSError("errno 2")
    reason, is_user = reason_of(chained(data))
    assert reason is data and is_user
    reason, is_user = reason_of(chained(KeyError("image")))
    assert isinstance(reason, KeyError) and not is_user


def test_a_full_or_read_only_disk_is_a_user_error_naming_the_file_and_the_fix():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/t1/t1_anomaly_map.nii.gz")
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapper:
        reason, is_user = reason_of(wrapper)
    assert is_user and isinstance(reason, OutputError)
    assert str(reason) == (
        "/out/t1/t1_anomaly_map.nii.gz: cannot write there (no space left on the device); free some space or give "
        "a folder on another disk"
    )
    # Permission denied may be an input that cannot be read: not taken for a write failure.
    assert not reason_of(PermissionError(errno.EACCES, "Permission denied", "/data/t1.nii.gz"))[1]


def test_writing_into_names_the_folder_what_was_written_and_what_is_kept():
    with pytest.raises(OutputError) as error:
        with writing_into("--output_dir /out", "while writing case t1", "the cases before are kept"):
            raise OSError(errno.EROFS, "Read-only file system", "/out/.t1.tmp-1234")
    assert str(error.value) == (
        "--output_dir /out: cannot write there (read-only file system while writing case t1); give a folder you "
        "can write to; the cases before are kept"
    )
    with pytest.raises(PermissionError):  # other errors pass as they are
        with writing_into("--output_dir /out"):
            raise PermissionError(errno.EACCES, "Permission denied", "/data/t1.nii.gz")


def test_user_error_prints_only_its_message_as_the_last_line():
    result = run_script(WRAPPED.format(error="DataError"))
    assert result.returncode == 1
    assert last_line(result.stderr) == "error: /data/scan_07.nii.gz: not a readable NIfTI image"
    assert "Traceback" not in result.stderr and "Failed to" not in result.stderr


def test_traceback_env_var_shows_the_whole_chain_and_still_ends_with_the_reason():
    result = run_script(WRAPPED.format(error="DataError"), env={"MEDICLIP_TRACEBACK": "1"})
    assert "Traceback" in result.stderr and "Failed to instantiate component" in result.stderr
    assert "zlib: invalid stored block lengths" in result.stderr
    assert last_line(result.stderr) == "error: /data/scan_07.nii.gz: not a readable NIfTI image"


def test_unexpected_error_prints_the_traceback_then_the_root_cause_last():
    result = run_script(WRAPPED.format(error="ValueError"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "Failed to instantiate component" in result.stderr
    assert last_line(result.stderr) == "error: OSError: zlib: invalid stored block lengths"


def test_under_torchrun_the_reason_goes_into_its_error_file(tmp_path):
    error_file = tmp_path / "error.json"
    run_script(WRAPPED.format(error="DataError"), env={"TORCHELASTIC_ERROR_FILE": str(error_file)})
    message = json.loads(error_file.read_text())["message"]
    assert message["extraInfo"]["py_callstack"] == "error: /data/scan_07.nii.gz: not a readable NIfTI image"


def test_keyboard_interrupt_keeps_pythons_own_report():
    result = run_script("import mediclip_monai.readable_errors\nraise KeyboardInterrupt")
    assert last_line(result.stderr) == "KeyboardInterrupt"


def test_a_missing_optional_package_says_what_to_install():
    require_package("json", "JSON", "nothing")  # present: no error
    with pytest.raises(MissingPackageError, match="pip install not-a-real-package") as error:
        require_package("not_a_real_package_xyz", "The frobnicator", "pip install not-a-real-package")
    assert "The frobnicator needs the package 'not_a_real_package_xyz'" in str(error.value)


def test_the_monai_label_app_without_monailabel_says_how_to_get_it():
    try:
        import monailabel  # noqa: F401

        pytest.skip("monailabel is installed here")
    except ImportError:
        pass
    result = run_script("import mediclip_monai.readable_errors\nimport mediclip_monai.label")
    assert "setup_monailabel_env.sh" in last_line(result.stderr)
    assert last_line(result.stderr).startswith("error: The MONAI Label app (mediclip_monai.label) needs")
