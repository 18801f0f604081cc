"""Decode, validate and normalise chest X-ray images (PNG, JPEG, DICOM; any bit depth).

pydicom is imported inside the DICOM decoder (only DICOM files need it).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.fft import dctn

# Bump when decode(), phash() or the quarantine rules change what a file gives: the ingest
# index then reads every file again (ingest_index.fingerprint).
DECODER_VERSION = 1
MIN_SIDE = 64
# A chest X-ray is at most a few thousand pixels a side; anything far above is a bomb.
MAX_PIXELS = 60_000_000
CANONICAL_SIZE = 512

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageRejected(ValueError):
    """The file is not a usable image; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # 2-D uint8, grey
    width: int
    height: int
    view: str | None = None
    sex: str | None = None
    age: float | None = None
    patient_id: str | None = None
    # acquisition facts (the confound report): file format, native bit depth, colour mode
    file_format: str = "unknown"  # dicom, png, jpeg, ...
    bit_depth: int = 8
    colour_mode: str = "grey"  # grey, rgb, rgba, palette


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any integer or float grey image to 0..255 uint8 by its own range."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(np.min(a)), float(np.max(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


COLOUR_MODES = {"L": "grey", "I;16": "grey", "I;16B": "grey", "I;16L": "grey", "I": "grey",
                "F": "grey", "1": "grey", "LA": "grey+alpha", "RGB": "rgb", "RGBA": "rgba",
                "P": "palette", "PA": "palette", "CMYK": "cmyk", "YCbCr": "rgb"}


def _raster_facts(img: Image.Image) -> tuple[str, int, str]:
    """(format, native bit depth, colour mode) of a PIL image as its file stores it."""
    mode = img.mode
    depth = 16 if mode.startswith("I;16") or mode in ("I", "F") else 8
    if mode in ("I", "F") and img.format == "PNG":
        depth = 16  # PIL opens 16-bit PNGs as I
    return (img.format or "unknown").lower(), depth, COLOUR_MODES.get(mode, mode.lower())


def _decode_raster(data: bytes) -> tuple[np.ndarray, tuple[str, int, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageRejected("too_large", f"{w}x{h} pixels exceeds {MAX_PIXELS}")
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", "not a PNG, JPEG or DICOM file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("corrupt", str(exc)) from exc
    return raster_to_grey(img), _raster_facts(img)


def raster_to_grey(img: Image.Image) -> np.ndarray:
    """PIL image of any mode (L, RGB, RGBA, I;16, I, F, P, LA) to 2-D uint8 grey."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_uint8(np.asarray(img))
    if mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _decode_dicom(data: bytes) -> DecodedImage:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types (RuntimeError too)
        raise ImageRejected("corrupt", f"unreadable DICOM ({_first_line(exc)})") from exc
    if "PixelData" not in ds:
        if _dicom_damaged(ds):
            raise ImageRejected("corrupt", "truncated or damaged DICOM (elements cut short)")
        raise ImageRejected("no_pixel_data", "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise ImageRejected("too_large", f"{cols}x{rows} pixels exceeds {MAX_PIXELS}")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        raise ImageRejected("corrupt", f"cannot decode DICOM pixels ({_first_line(exc)})") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = np.asarray(Image.fromarray(arr[..., :3].astype(np.uint8)).convert("L"))
    elif arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise ImageRejected("corrupt", f"unexpected DICOM pixel shape {arr.shape}")
    pixels = to_uint8(arr)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        pixels = 255 - pixels
    age = _dicom_age(str(ds.get("PatientAge", "") or ""))
    sex = str(ds.get("PatientSex", "") or "") or None
    view = str(ds.get("ViewPosition", "") or "") or None
    patient = str(ds.get("PatientID", "") or "") or None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return DecodedImage(pixels, pixels.shape[1], pixels.shape[0], view, sex, age, patient,
                        "dicom", int(ds.get("BitsStored", 8) or 8),
                        "grey" if samples == 1 else "rgb")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _dicom_damaged(ds: object) -> bool:
    """True when pydicom's lenient reader stopped early: no elements, or one cut short.

    pydicom parses garbage after ``DICM`` and truncated files without an error, so without
    this check they would read as a well-formed file that merely lacks pixel data.
    """
    elements = list(ds.elements())  # type: ignore[attr-defined]  # raw, not converted
    if not elements:
        return True
    for elem in elements:
        value, length = getattr(elem, "value", None), getattr(elem, "length", 0)
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
            return True
    return False


def _dicom_age(text: str) -> float | None:
    text = text.strip().upper()
    if not text:
        return None
    try:
        if text[-1] in "DWMY":
            value, unit = float(text[:-1]), text[-1]
            return value / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[unit]
        return float(text)
    except ValueError:
        return None


def decode(data: bytes) -> DecodedImage:
    """Decode image bytes to grey uint8, or raise :class:`ImageRejected` with a reason."""
    if not data:
        raise ImageRejected("empty_file", "zero bytes")
    try:
        if is_dicom(data):
            img = _decode_dicom(data)
        else:
            pixels, (fmt, depth, colour) = _decode_raster(data)
            img = DecodedImage(pixels, pixels.shape[1], pixels.shape[0], file_format=fmt,
                               bit_depth=depth, colour_mode=colour)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged headers make decoders raise anything
        # e.g. pydicom's NotImplementedError for a garbled VR, ValueError for a garbled Rows
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if min(img.width, img.height) < MIN_SIDE:
        raise ImageRejected("too_small", f"{img.width}x{img.height} is below {MIN_SIDE} px")
    return img


def normalise(pixels: np.ndarray, size: int = CANONICAL_SIZE) -> np.ndarray:
    """Resize grey pixels to ``size`` x ``size`` (area filter) as uint8."""
    img = Image.fromarray(to_uint8(np.ascontiguousarray(pixels)))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def phash(pixels: np.ndarray, side: int = 16) -> str:
    """A perceptual hash of a grey image, as hex: the signs (against their median) of the
    ``side`` x ``side`` lowest DCT frequencies of the image shrunk to 4·side px, DC left out.
    Re-encoded or resized copies of one radiograph get nearly equal hashes (at most 8 of 255
    bits apart on ../shared/data), different radiographs far apart (64 or more)."""
    small = np.asarray(Image.fromarray(to_uint8(np.ascontiguousarray(pixels))).resize(
        (4 * side, 4 * side), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(small, norm="ortho")[:side, :side].reshape(-1)[1:]
    bits = np.concatenate([[False], low > np.median(low)])  # 256 bits, the first always 0
    return np.packbits(bits).tobytes().hex()


# Pillow's options for the plots' PNGs (matplotlib's ``savefig(pil_kwargs=...)``): zlib
# level 1 drew and wrote a Grad-CAM panel in 0.22 s against level 6's 0.40 s, ~18 % larger
# (8 images at 128 px, measured here)
FAST_PNG = {"compress_level": 1}


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless grey PNG, zlib level 1: a third of level 6's encoding time for ~15 % more
    bytes (measured on synthetic radiographs at 128 px: 0.47 vs 1.58 ms)."""
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
