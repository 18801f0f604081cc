"""A synthetic data set in the ieee8023 and RSNA layouts, for the demo and the tests.

The images are not clinical: a chest-like grey field with two darker "lungs"; COVID-19
images carry diffuse bright patches inside the lungs, which a small model can learn. The
files exercise the real decoders: grey and RGB PNG, 16-bit PNG, JPEG, and DICOM (8-bit
MONOCHROME2, uncompressed and JPEG-baseline, one MONOCHROME1).

pydicom is imported inside the DICOM writer (only the RSNA half needs it).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from covid_pipeline import storage

IEEE_COLUMNS = ["Patientid", "offset", "sex", "age", "finding", "survival", "view", "modality",
                "date", "location", "filename", "doi", " url", "license", "clinical notes",
                "other notes", ""]


@dataclass(frozen=True)
class SynthSummary:
    root: str
    ieee8023: str
    rsna: str
    covid_images: int
    covid_patients: int
    normal_images: int


def chest_image(rng: np.random.Generator, size: tuple[int, int], covid: bool) -> np.ndarray:
    """A grey uint8 chest-like picture of ``size`` (height, width)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    img = 0.55 + 0.15 * rng.standard_normal() * 0.2 + 0.1 * yy
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1.0
        img = np.where(lung, img - 0.3, img)
        if covid:
            for _ in range(int(rng.integers(3, 6))):
                px, py = cx + rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.75)
                r = rng.uniform(0.04, 0.09)
                blob = np.exp(-(((xx - px) ** 2 + (yy - py) ** 2) / (2 * r * r)))
                img = img + 0.35 * blob * lung
    img = img + 0.04 * rng.standard_normal((h, w)).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _png(pixels: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    if mode == "RGB":
        Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(buf, format="PNG")
    elif mode == "I;16":
        Image.fromarray(pixels.astype(np.uint16) * 257).save(buf, format="PNG")
    else:
        Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def dicom_bytes(pixels: np.ndarray, patient_id: str, *, jpeg: bool = False,
                monochrome1: bool = False, view: str = "PA", sex: str = "F",
                age: str = "045Y") -> bytes:
    """An 8-bit DICOM file (uncompressed, or JPEG-baseline encapsulated)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id])
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.ViewPosition = view
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    stored = 255 - pixels if monochrome1 else pixels
    if jpeg:
        ds.PixelData = encapsulate([_jpeg(stored)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_synthetic(root: str, *, covid_patients: int = 12, images_per_patient: int = 2,
                   normals: int = 24, size: int = 256, seed: int = 0) -> SynthSummary:
    """Write ``<root>/ieee8023`` and ``<root>/rsna`` in the upstream layouts."""
    rng = np.random.default_rng(seed)
    ieee = storage.join(root, "ieee8023")
    rsna = storage.join(root, "rsna")
    rows: list[dict] = []
    modes = ["L", "RGB", "JPEG", "I;16"]
    views = ["PA", "AP", "AP Supine", "PA"]
    n_covid = 0
    for p in range(covid_patients):
        pid = str(100 + p)
        for k in range(images_per_patient):
            shape = (int(size * rng.uniform(0.9, 1.3)), int(size * rng.uniform(0.9, 1.3)))
            pixels = chest_image(rng, shape, covid=True)
            mode = modes[(p + k) % len(modes)]
            ext = "jpg" if mode == "JPEG" else "png"
            name = f"covid-{pid}-{k}.{ext}"
            data = _jpeg(pixels) if mode == "JPEG" else _png(pixels, mode)
            storage.write_bytes(storage.join(ieee, "images", name), data)
            finding = "COVID-19" if p % 3 else "COVID-19, ARDS"
            rows.append(_ieee_row(pid, k, finding, views[(p + k) % 4], "X-ray", name))
            n_covid += 1
    # rows the protocol excludes: a lateral view, a CT slice, another finding
    side = chest_image(rng, (size, size), covid=True)
    storage.write_bytes(storage.join(ieee, "images", "lateral.png"), _png(side, "L"))
    rows.append(_ieee_row("100", 9, "COVID-19", "L", "X-ray", "lateral.png"))
    storage.write_bytes(storage.join(ieee, "images", "ct.png"), _png(side, "L"))
    rows.append(_ieee_row("101", 9, "COVID-19", "Axial", "CT", "ct.png"))
    storage.write_bytes(storage.join(ieee, "images", "sars.png"), _png(side, "L"))
    rows.append(_ieee_row("300", 0, "SARS", "PA", "X-ray", "sars.png"))
    storage.write_text(storage.join(ieee, "metadata.csv"), _csv(IEEE_COLUMNS, rows))

    labels = [["patientId", "x", "y", "width", "height", "Target"]]
    info = [["patientId", "class"]]
    for i in range(normals):
        pid = f"00000000-0000-4000-8000-{i:012d}"
        pixels = chest_image(rng, (size, size), covid=False)
        data = dicom_bytes(pixels, pid, jpeg=i % 2 == 0, monochrome1=i == 1,
                           view="PA" if i % 3 else "AP", sex="MF"[i % 2],
                           age=f"{30 + i % 900:03d}Y")  # 3 digits
        storage.write_bytes(storage.join(rsna, "stage_2_train_images", f"{pid}.dcm"), data)
        labels.append([pid, "", "", "", "", "0"])
        info.append([pid, "Normal"])
    for i in range(3):  # opacity images with two boxes each: never normals
        pid = f"11111111-0000-4000-8000-{i:012d}"
        pixels = chest_image(rng, (size, size), covid=False)
        storage.write_bytes(storage.join(rsna, "stage_2_train_images", f"{pid}.dcm"),
                            dicom_bytes(pixels, pid))
        for _ in range(2):
            labels.append([pid, "10", "10", "50", "50", "1"])
            info.append([pid, "Lung Opacity"])
    pid = "22222222-0000-4000-8000-000000000000"
    labels.append([pid, "", "", "", "", "0"])
    info.append([pid, "No Lung Opacity / Not Normal"])
    storage.write_bytes(storage.join(rsna, "stage_2_train_images", f"{pid}.dcm"),
                        dicom_bytes(chest_image(rng, (size, size), covid=False), pid))
    storage.write_text(storage.join(rsna, "stage_2_train_labels.csv"), _rows_csv(labels))
    storage.write_text(storage.join(rsna, "stage_2_detailed_class_info.csv"), _rows_csv(info))
    return SynthSummary(root, ieee, rsna, n_covid, covid_patients, normals)


def add_normals(rsna_root: str, count: int, *, size: int = 256, seed: int = 1,
                prefix: str = "33333333") -> list[str]:
    """Add ``count`` normal DICOMs (and their rows) to an RSNA layout; return their ids."""
    rng = np.random.default_rng(seed)
    labels_uri = storage.join(rsna_root, "stage_2_train_labels.csv")
    info_uri = storage.join(rsna_root, "stage_2_detailed_class_info.csv")
    labels, info = storage.read_text(labels_uri), storage.read_text(info_uri)
    ids = []
    for i in range(count):
        pid = f"{prefix}-0000-4000-8000-{i:012d}"
        data = dicom_bytes(chest_image(rng, (size, size), covid=False), pid, jpeg=i % 2 == 0)
        storage.write_bytes(storage.join(rsna_root, "stage_2_train_images", f"{pid}.dcm"), data)
        labels += _rows_csv([[pid, "", "", "", "", "0"]])
        info += _rows_csv([[pid, "Normal"]])
        ids.append(pid)
    storage.write_text(labels_uri, labels)
    storage.write_text(info_uri, info)
    return ids


def _ieee_row(pid: str, offset: int, finding: str, view: str, modality: str, name: str) -> dict:
    return {"Patientid": pid, "offset": str(offset), "sex": "MF"[int(pid) % 2],
            "age": str(40 + int(pid) % 40), "finding": finding, "survival": "", "view": view,
            "modality": modality, "date": "2020", "location": "synthetic", "filename": name,
            "doi": "", " url": "https://example.invalid/synthetic", "license": "CC0",
            "clinical notes": "", "other notes": "", "": ""}


def _csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _rows_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()
