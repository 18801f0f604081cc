"""Decoding every format and depth the upstream data sets use."""

from __future__ import annotations

import io

import numpy as np
import pytest
from imagefiles import grey, jpeg_bytes, png_bytes
from PIL import Image

from covid_pipeline import imaging
from covid_pipeline.synth import chest_image, dicom_bytes


def test_grey_png_round_trips_exactly():
    px = grey()
    out = imaging.decode(png_bytes(px))
    assert (out.width, out.height) == (96, 128)
    np.testing.assert_array_equal(out.pixels, px)


def test_rgb_and_rgba_png_become_grey():
    px = grey()
    rgb = np.stack([px] * 3, axis=-1)
    np.testing.assert_array_equal(imaging.decode(png_bytes(rgb)).pixels, px)
    rgba = np.concatenate([rgb, np.full(px.shape + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(imaging.decode(png_bytes(rgba)).pixels, px)


def test_sixteen_bit_png_is_scaled_to_full_range():
    px16 = (grey().astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(px16).save(buf, format="PNG")
    out = imaging.decode(buf.getvalue()).pixels
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, imaging.to_uint8(px16))


def test_jpeg_decodes_close_to_source():
    px = chest_image(np.random.default_rng(0), (128, 128), covid=False)
    out = imaging.decode(jpeg_bytes(px)).pixels
    assert np.abs(out.astype(int) - px).mean() < 4


@pytest.mark.parametrize("jpeg", [False, True])
def test_dicom_monochrome2_uncompressed_and_jpeg(jpeg):
    px = chest_image(np.random.default_rng(0), (128, 128), covid=False)
    out = imaging.decode(dicom_bytes(px, "P1", jpeg=jpeg, view="AP", sex="M", age="061Y"))
    assert (out.patient_id, out.view, out.sex, out.age) == ("P1", "AP", "M", 61.0)
    diff = np.abs(out.pixels.astype(int) - imaging.to_uint8(px))
    assert diff.mean() < (4 if jpeg else 1e-9)


def test_dicom_monochrome1_is_inverted_to_monochrome2():
    px = chest_image(np.random.default_rng(0), (96, 96), covid=False)
    out = imaging.decode(dicom_bytes(px, "P2", monochrome1=True)).pixels
    np.testing.assert_array_equal(out, imaging.to_uint8(px))


def test_sixteen_bit_dicom():
    from pydicom import dcmread

    px = chest_image(np.random.default_rng(0), (96, 96), covid=False)
    ds = dcmread(io.BytesIO(dicom_bytes(px, "P3")))
    wide = px.astype(np.uint16) * 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = wide.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    out = imaging.decode(buf.getvalue()).pixels
    np.testing.assert_array_equal(out, imaging.to_uint8(wide))


def test_normalise_gives_square_canonical_size():
    out = imaging.normalise(grey(300, 200), 128)
    assert out.shape == (128, 128) and out.dtype == np.uint8
    np.testing.assert_array_equal(imaging.decode_png(imaging.encode_png(out)), out)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_file"),
        (b"hello, this is not an image at all" * 10, "not_an_image"),
        (png_bytes(grey())[:200], "corrupt"),
        (png_bytes(grey(40, 300)), "too_small"),
    ],
)
def test_rejections_carry_a_reason(data, reason):
    with pytest.raises(imaging.ImageRejected) as err:
        imaging.decode(data)
    assert err.value.reason == reason


def test_decompression_bomb_is_rejected_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")  # small file, 144 Mpx
    with pytest.raises(imaging.ImageRejected) as err:
        imaging.decode(buf.getvalue())
    assert err.value.reason == "too_large"


def test_dicom_without_pixel_data():
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom_bytes(grey(), "P4")))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(imaging.ImageRejected) as err:
        imaging.decode(buf.getvalue())
    assert err.value.reason == "no_pixel_data"


def test_decoding_records_the_acquisition_facts():
    """Format, native bit depth and colour mode as the file stores them (the confound
    report and the acquisition-only baseline read them from the manifest)."""
    px = grey(80, 90)
    rgb = np.stack([px] * 3, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(px.astype(np.uint16) * 257).save(buf, format="PNG")
    cases = {
        "grey png": (png_bytes(px), ("png", 8, "grey")),
        "rgb jpeg": (jpeg_bytes(rgb), ("jpeg", 8, "rgb")),
        "rgba png": (png_bytes(np.dstack([rgb, px])), ("png", 8, "rgba")),
        "16-bit png": (buf.getvalue(), ("png", 16, "grey")),
        "dicom": (dicom_bytes(chest_image(np.random.default_rng(0), (80, 80), covid=False),
                              "P9"), ("dicom", 8, "grey")),
    }
    for name, (data, expected) in cases.items():
        img = imaging.decode(data)
        assert (img.file_format, img.bit_depth, img.colour_mode) == expected, name
