"""read_image_bytes / read_dicom_bytes: the same decoding and the same errors as from a file."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BAD_FILE_WRITERS
from PIL import Image

from pneumoscope.data.io import (
    read_dicom,
    read_dicom_bytes,
    read_image,
    read_image_bytes,
)
from pneumoscope.errors import ImageReadError, ImageTooLargeError


def test_png_and_dicom_bytes_decode_like_files(tmp_path, synth_root) -> None:
    png = min((synth_root / "test").rglob("*.png"))
    assert np.array_equal(read_image_bytes(png.read_bytes(), png.name), read_image(png))
    from test_serving import dicom_bytes

    gray = np.asarray(Image.open(png).convert("L"))
    dcm = tmp_path / "x.dcm"
    dcm.write_bytes(dicom_bytes(gray, PatientID="P1"))
    assert np.array_equal(read_image_bytes(dcm.read_bytes(), "x.dcm"), read_image(dcm))
    assert read_dicom_bytes(dcm.read_bytes(), "x.dcm").PatientID == read_dicom(dcm).PatientID == "P1"


@pytest.mark.parametrize("kind", list(BAD_FILE_WRITERS))
def test_errors_are_identical(tmp_path, kind) -> None:
    path = BAD_FILE_WRITERS[kind](tmp_path / ("x.dcm" if kind == "dicom_no_pixels" else "x.jpeg"))
    with pytest.raises(ImageReadError) as from_file:
        read_image(path)
    with pytest.raises(ImageReadError) as from_bytes:
        read_image_bytes(path.read_bytes(), path.name)
    assert from_bytes.value.problem == from_file.value.problem
    assert str(from_bytes.value) == f"x.{path.suffix[1:]}: {from_file.value.problem}"


def test_client_path_is_reduced_to_its_name_and_size_errors_are_typed(tmp_path) -> None:
    with pytest.raises(ImageReadError, match=r"^scan\.png: file is empty"):
        read_image_bytes(b"", "C:\\Users\\dr\\scan.png")
    arr = np.zeros((20, 30), np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        read_image_bytes(path.read_bytes(), "a.png", max_pixels=599)
    with pytest.raises(ImageTooLargeError):  # the file reader raises the same subclass
        read_image(path, max_pixels=599)
    assert read_image_bytes(path.read_bytes(), "a.png", max_pixels=600).shape == (20, 30)
