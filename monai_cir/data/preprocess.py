"""Image preprocessing shared by training, indexing, search and the deploy app.

arXiv v1 section 3.1: "we first removed black boundary artifacts and then resized all images to
512 x 512 pixels". The size is a parameter (``image_size`` of the model config) because 260 x 260
scores as well at a quarter of the cost (DESIGN.md section 3).

Every path into the network goes through :func:`preprocess_image`, so a library image and a query
image are treated identically; the model fingerprint records the size (an index built at another
size is refused).

Every image *file* (JPEG, PNG...) is decoded by :func:`read_rgb`: the training and index reads
(:func:`load_image`), ``dicomize`` when it cannot carry a JPEG as-is, and the deploy app's library
thumbnails. torch is imported on first use, not here, so that ``dicomize`` and the DICOM reader can
decode a file without paying for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Mapping

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = [
    "BLANK_RANGE",
    "GREYSCALE_NOTICE",
    "MIN_IMAGE_SIDE",
    "blank_spread",
    "image_content_problem",
    "is_grey",
    "remove_black_border",
    "to_rgb_uint8",
    "preprocess_image",
    "load_image",
    "read_rgb",
    "RemoveBlackBorder",
    "PreprocessImaged",
]


# What a query image must be for an answer, the same for a DICOM frame (monai_cir.dicom.reader) and an image file
# (`monai-cir search`): not blank, not a thumbnail; a greyscale one is answered with a notice.
# a frame is blank when, in every channel, 98% of its pixels lie within this many grey levels
BLANK_RANGE = 4
# an image with a side shorter than this is not a dermoscopy image the model can read (refused)
MIN_IMAGE_SIDE = 32
GREYSCALE_NOTICE = ("greyscale image: the model was trained on colour dermoscopy and the colour cues are missing; weigh the "
                    "similar cases accordingly")


def blank_spread(frame: np.ndarray) -> float | None:
    """The widest per-channel 1-99 percentile range of an (H, W, C) frame when it is (nearly) constant (at most
    :data:`BLANK_RANGE`), else None. Read on a grid of about 128 x 128 pixels (enough for the percentiles), inside
    the black frame a dermatoscope leaves (:func:`remove_black_border`, as :func:`preprocess_image` crops it): what
    the network sees, so that a query and a library image are judged on the same pixels (a flat field in a black
    frame is blank either way)."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    sample = frame[:: max(1, frame.shape[0] // 128), :: max(1, frame.shape[1] // 128)]
    if sample.dtype == np.uint8 and sample.shape[-1] in (1, 3, 4):  # wider data is read in its own units, uncropped
        sample = remove_black_border(sample)
    sample = sample.reshape(-1, sample.shape[-1])
    low, high = np.percentile(sample, [1, 99], axis=0)
    spread = float((high - low).max())
    return spread if spread <= BLANK_RANGE else None


def is_grey(frame: np.ndarray) -> bool:
    """Whether an (H, W[, C]) frame's pixels are grey: one channel, or three equal ones."""
    frame = np.asarray(frame)
    if frame.ndim == 2 or frame.shape[-1] == 1:
        return True
    return bool(np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2]))


def image_content_problem(frame: np.ndarray) -> str | None:
    """Why an (H, W[, C]) image cannot be answered (a side under :data:`MIN_IMAGE_SIDE` pixels, or blank: its pixels
    constant or nearly so), None when it can."""
    rows, columns = np.asarray(frame).shape[:2]
    if min(rows, columns) < MIN_IMAGE_SIDE:
        return f"image of {columns}x{rows} pixels: too small for a dermoscopy query (at least {MIN_IMAGE_SIDE} pixels a side)"
    spread = blank_spread(frame)
    if spread is not None:
        return f"the image is blank: its pixels are constant or nearly so (range {spread:.0f} of 255 grey levels)"
    return None


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, uint8 or wider, as (H, W, 3) uint8.

    Greyscale is replicated to RGB, alpha is dropped, 16-bit and float data are rescaled by their
    range (so 12/16-bit DICOM frames keep their contrast)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("image contains NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if np.issubdtype(array.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            values = values * 255.0
        elif hi > lo:
            values = (values - lo) / (hi - lo) * 255.0
        else:
            values = np.zeros_like(values)
        array = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def remove_black_border(image: np.ndarray, threshold: int = 20, dark_fraction: float = 0.95) -> np.ndarray:
    """Crop the black frame that dermatoscopes leave around the field of view.

    A border row (column) is dropped while at least ``dark_fraction`` of its pixels have every
    channel below ``threshold``; cropping stops at the first row (column) with content, so dark
    lesion pixels inside the image are never removed. Returns the image unchanged if it would
    crop to less than a quarter of either side (a very dark image is not a border).
    """
    rgb = to_rgb_uint8(image)
    # every channel below threshold = the brightest channel below it (ten times faster than .all over a 3-long axis)
    dark = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) < threshold
    rows = dark.mean(axis=1) < dark_fraction
    cols = dark.mean(axis=0) < dark_fraction
    if not rows.any() or not cols.any():
        return rgb
    top, bottom = int(np.argmax(rows)), int(len(rows) - np.argmax(rows[::-1]))
    left, right = int(np.argmax(cols)), int(len(cols) - np.argmax(cols[::-1]))
    if (bottom - top) < rgb.shape[0] / 4 or (right - left) < rgb.shape[1] / 4:
        return rgb
    return rgb[top:bottom, left:right]


def preprocess_image(image: np.ndarray | Image.Image, image_size: int = 512, remove_border: bool = True) -> torch.Tensor:
    """(H, W[, C]) pixels -> (3, image_size, image_size) float32 RGB in [0, 1].

    Black border removal, then a bilinear (antialiased) resize to a square, as in the paper."""
    import torch
    import torch.nn.functional as F

    array = to_rgb_uint8(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    if remove_border:
        array = remove_black_border(array)
    tensor = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return tensor.squeeze(0).clamp_(0.0, 1.0)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file (JPEG, PNG, anything Pillow reads) as (H, W, 3) uint8 RGB, read-only.

    Pillow's ``convert("RGB")``: greyscale and palette images become RGB, an alpha channel is dropped
    (not composited); 16-bit and float greyscale (Pillow's ``I;16``, ``I``, ``F``, which ``convert`` would
    clip to white) are rescaled by their range (:func:`to_rgb_uint8`, as a greyscale DICOM frame); EXIF
    orientation is not applied (the pixels as stored, as ``dicomize`` carries a JPEG). Raises ``FileNotFoundError`` for a missing file
    and ``ValueError`` naming the file and what is wrong for one Pillow cannot decode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, inside the try, not later
            wide = img.mode.startswith("I") or img.mode == "F"
            rgb = np.asarray(img) if wide else img.convert("RGB")
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... for broken files
        detail = str(err).replace(repr(str(path)), "").strip() or type(err).__name__  # the path is named once, below
        raise ValueError(
            f"cannot read image {path}: {detail}; expected a complete JPEG, PNG or other file Pillow reads "
            "(replace the file or re-export it)"
        ) from err
    if wide:
        out = to_rgb_uint8(rgb)
        out.setflags(write=False)
        return out
    return np.asarray(rgb)


def load_image(path: str | Path, image_size: int = 512, remove_border: bool = True) -> torch.Tensor:
    """Read an image file (:func:`read_rgb`) and preprocess it; errors name the file."""
    return preprocess_image(read_rgb(path), image_size, remove_border)


def _transform_classes() -> dict[str, type]:
    from monai.transforms import MapTransform, Transform

    class RemoveBlackBorder(Transform):
        """MONAI transform form of :func:`remove_black_border` (HWC arrays)."""

        def __init__(self, threshold: int = 20, dark_fraction: float = 0.95) -> None:
            self.threshold = threshold
            self.dark_fraction = dark_fraction

        def __call__(self, image: np.ndarray) -> np.ndarray:
            return remove_black_border(image, self.threshold, self.dark_fraction)

    class PreprocessImaged(MapTransform):
        """Dictionary transform: a path or an HWC array under ``keys`` -> (3, S, S) tensor in [0, 1]."""

        def __init__(self, keys: Any, image_size: int = 512, remove_border: bool = True, allow_missing_keys: bool = False) -> None:
            super().__init__(keys, allow_missing_keys)
            self.image_size = image_size
            self.remove_border = remove_border

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            for key in self.key_iterator(d):
                value = d[key]
                if isinstance(value, (str, Path)):
                    d[key] = load_image(value, self.image_size, self.remove_border)
                else:
                    d[key] = preprocess_image(value, self.image_size, self.remove_border)
            return d

    for cls in (RemoveBlackBorder, PreprocessImaged):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return {"RemoveBlackBorder": RemoveBlackBorder, "PreprocessImaged": PreprocessImaged}


def __getattr__(name: str) -> Any:
    if name in ("RemoveBlackBorder", "PreprocessImaged"):
        globals().update(_transform_classes())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
