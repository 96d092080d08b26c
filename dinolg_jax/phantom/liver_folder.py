"""A CT collection outside COCA: abdominal phantoms with liver masks, as NIfTI or DICOM folders.

For ``tools/convert_folder.py`` and its tests: label-guided DINO on a structure other
than coronary calcium. Each case is a small abdominal slab (canonical layout, see
``data/volume.py``): air, a body ellipse of soft tissue (40 HU) in a fat rim (-100 HU), a
vertebra (500 HU) posteriorly, and a liver (60 HU) on the patient's right: an ellipsoid
with a notch cut from its medial side, so its cross-sections are crescents on some
slices (their centroid outside the organ). Labels: 1 liver, 2 a small lesion (100 HU)
inside it in every other case. The top and bottom slices miss the liver. Gaussian noise
(std 8 HU), deterministic from the seed.

`write_nifti_folder` writes ``images/case-NN.nii.gz`` (int16 HU) and
``masks/case-NN.nii.gz`` (uint8 labels, same affine), the cases stored in four different
axis layouts (LPS-ordered, RAS-ordered, slices descending, rows and columns swapped) so a
reader must reorient them. `write_dicom_folder` writes ``images/patient-NN/ct/IM-*.dcm``
(one series per leaf folder, uint16 + RescaleIntercept -1024, made-up identifying header
values) with ``masks/patient-NN/ct.nii.gz``. Both return each case's truth in the
canonical layout. ``.nii.gz`` files are byte-deterministic (gzip with mtime 0); this
module never touches the COCA phantom (``coca_release.py``).
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import CTImageStorage

from dinolg_jax.phantom import file_formats

LIVER, LESION = 1, 2
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# (file axis of slice, row, column), (slice, row, column reversed?) per stored layout
LAYOUTS = (
    ((2, 1, 0), (False, False, False)),  # i = +x (left), j = +y, k = +z: LPS order
    ((2, 1, 0), (False, True, True)),  # RAS order (nibabel's canonical)
    ((2, 1, 0), (True, False, False)),  # slices stored superior first
    ((2, 0, 1), (False, False, True)),  # rows along i, columns along j (reversed)
)


@dataclasses.dataclass(frozen=True)
class PhantomCase:
    """One written case and its truth in the canonical layout.

    Attributes:
      image: path of the image file (NIfTI) or series folder (DICOM), relative to
        ``root/images``.
      mask: path of the mask, relative to ``root/masks``.
      hu: int16 [Z, H, W] HU; labels: uint8 [Z, H, W] (0, 1 liver, 2 lesion).
      affine_lps: float64 [4, 4], canonical voxel ``(column, row, slice, 1)`` -> LPS mm.
    """

    image: str
    mask: str
    hu: np.ndarray
    labels: np.ndarray
    affine_lps: np.ndarray


def abdomen(
    rng: np.random.Generator, size: int, n_slices: int, *, lesion: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One case's (hu int16 [Z, H, W], labels uint8 [Z, H, W]), canonical layout."""
    z, r, c = np.meshgrid(
        np.linspace(-1, 1, n_slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
        indexing="ij",
    )  # fmt: skip
    body_a, body_b = rng.uniform(0.85, 0.92), rng.uniform(0.7, 0.8)
    body = (c / body_a) ** 2 + (r / body_b) ** 2 <= 1
    inner = (c / (body_a - 0.08)) ** 2 + (r / (body_b - 0.08)) ** 2 <= 1
    spine = (c**2 + (r - 0.55 * body_b) ** 2) <= 0.12**2
    # The liver: patient right (low column), anterior-central rows, spanning the inner
    # slices; a notch on its medial side makes crescent cross-sections.
    cx, cr = rng.uniform(-0.45, -0.35), rng.uniform(-0.15, -0.05)
    ax, ar, az = rng.uniform(0.3, 0.36), rng.uniform(0.35, 0.42), 0.75
    liver = ((c - cx) / ax) ** 2 + ((r - cr) / ar) ** 2 + (z / az) ** 2 <= 1
    notch = ((c - cx - 0.8 * ax) / (0.6 * ax)) ** 2 + ((r - cr) / (0.55 * ar)) ** 2 <= 1
    liver &= ~notch & inner
    hu = np.full(z.shape, -1000.0)
    hu[body] = -100.0
    hu[inner] = 40.0
    hu[spine & inner] = 500.0
    hu[liver] = 60.0
    labels = np.where(liver, LIVER, 0).astype(np.uint8)
    if lesion:
        lc = cx - 0.3 * ax, cr + 0.2 * ar
        spot = ((c - lc[0]) ** 2 + (r - lc[1]) ** 2 + (z / 2) ** 2) <= 0.1**2
        spot &= liver
        hu[spot] = 100.0
        labels[spot] = LESION
    hu += rng.normal(0.0, 8.0, hu.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels


def _canonical_affine(pixel_mm: float, thickness: float, origin: np.ndarray) -> np.ndarray:
    """Canonical voxel (column, row, slice, 1) -> LPS: +x, +y, +z steps."""
    out = np.diag([pixel_mm, pixel_mm, thickness, 1.0])
    out[:3, 3] = origin
    return out


def stored(
    canonical: np.ndarray, affine_lps: np.ndarray, layout: int
) -> tuple[np.ndarray, np.ndarray]:
    """`canonical` [Z, H, W] in stored `layout` (`LAYOUTS`): (data [i, j, k], RAS affine)."""
    file_axes, flips = LAYOUTS[layout]
    flipped = canonical[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    order = [file_axes.index(a) for a in range(3)]  # file axis a holds canonical axis
    data = np.transpose(flipped, order)
    # file index (i, j, k, 1) -> canonical (slice, row, column, 1) -> LPS
    to_canonical = np.zeros((4, 4))
    to_canonical[3, 3] = 1.0
    for c, (a, f) in enumerate(zip(file_axes, flips, strict=True)):
        to_canonical[c, a] = -1.0 if f else 1.0
        to_canonical[c, 3] = canonical.shape[c] - 1 if f else 0.0
    zrc_to_crz = np.zeros((4, 4))
    zrc_to_crz[0, 2] = zrc_to_crz[1, 1] = zrc_to_crz[2, 0] = zrc_to_crz[3, 3] = 1.0
    return np.ascontiguousarray(data), LPS_RAS @ affine_lps @ zrc_to_crz @ to_canonical


def nifti_bytes(data: np.ndarray, affine_ras: np.ndarray, *, labels: bool) -> bytes:
    """A gzip-compressed NIfTI-1 file (qform and sform = `affine_ras`, code 1), mtime 0."""
    img = nib.Nifti1Image(data, affine_ras)
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    img.header.set_xyzt_units("mm")
    if labels:
        img.header.set_intent("label")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _case(
    rng: np.random.Generator, index: int, size: int, n_slices: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pixel_mm = (0.75, 0.8, 0.7, 0.85)[index % 4]
    half = round(size * pixel_mm / 2, 1)  # short DICOM decimal strings
    origin = np.array([-half, -half + 10.0, -50.0 + 5.0 * index])
    hu, labels = abdomen(rng, size, n_slices, lesion=index % 2 == 1)
    return hu, labels, _canonical_affine(pixel_mm, 2.5, origin)


def write_nifti_folder(
    root: str | Path, *, n_cases: int = 4, seed: int = 0, size: int = 48, n_slices: int = 12
) -> list[PhantomCase]:
    """Writes ``root/images/case-NN.nii.gz`` and ``root/masks/case-NN.nii.gz`` (docstring).

    Case ``n`` is stored in layout ``n % 4`` (`LAYOUTS`), pixel spacing 0.7 .. 0.85 mm,
    2.5 mm slices; odd cases carry a lesion (label 2).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for n in range(n_cases):
        hu, labels, affine = _case(rng, n, size, n_slices)
        name = f"case-{n:02d}.nii.gz"
        data, ras = stored(hu, affine, n % len(LAYOUTS))
        (root / "images" / name).write_bytes(nifti_bytes(data, ras, labels=False))
        data, ras = stored(labels, affine, n % len(LAYOUTS))
        (root / "masks" / name).write_bytes(nifti_bytes(data, ras, labels=True))
        cases.append(PhantomCase(name, name, hu, labels, affine))
    return cases


def write_dicom_folder(
    root: str | Path, *, n_cases: int = 2, seed: int = 0, size: int = 48, n_slices: int = 12
) -> list[PhantomCase]:
    """Writes ``root/images/patient-NN/ct/IM-*.dcm`` and ``root/masks/patient-NN/ct.nii.gz``.

    Each series: Explicit VR Little Endian, axial ``(1, 0, 0, 0, 1, 0)``, uint16 stored
    HU + 1024, made-up PatientName / PatientID / dates / institution; the mask in LPS
    order with the series' affine.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    cases = []
    for n in range(n_cases):
        hu, labels, affine = _case(rng, n, size, n_slices)
        phi = file_formats.fake_phi(rng, f"LIV{n:02d}")
        pixel = float(affine[0, 0])
        common = {
            "SpecificCharacterSet": "ISO_IR 100",
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
            "SOPClassUID": CTImageStorage,
            "Modality": "CT",
            "Manufacturer": "PHANTOM",
            "BodyPartExamined": "ABDOMEN",
            "SliceThickness": "2.5",
            "KVP": "120",
            "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
            "StudyInstanceUID": file_formats.uid(seed, 9000 + n, 1),
            "FrameOfReferenceUID": file_formats.uid(seed, 9000 + n, 2),
            "PatientPosition": "HFS",
            "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2",
            "Rows": size,
            "Columns": size,
            "PixelSpacing": [repr(pixel), repr(pixel)],
            "BitsAllocated": 16,
            "BitsStored": 12,
            "HighBit": 11,
            "PixelRepresentation": 0,
            "RescaleIntercept": "-1024",
            "RescaleSlope": "1",
            "RescaleType": "HU",
            **phi,
        }
        folder = f"patient-{n:02d}/ct"
        file_formats.write_series(
            root / "images" / folder,
            hu,
            series_idx=1,
            seed=seed,
            key=9000 + n,
            common=common,
            ipp_xy=(float(affine[0, 3]), float(affine[1, 3])),
            z_world=affine[2, 3] + 2.5 * np.arange(n_slices),
            superior_first=n % 2 == 0,
            series_uid=file_formats.uid(seed, 9000 + n, 3),
            series_number=2,
        )
        mask = f"patient-{n:02d}/ct.nii.gz"
        (root / "masks" / mask).parent.mkdir(parents=True, exist_ok=True)
        data, ras = stored(labels, affine, 0)
        (root / "masks" / mask).write_bytes(nifti_bytes(data, ras, labels=True))
        cases.append(PhantomCase(folder, mask, hu, labels, affine))
    return cases
