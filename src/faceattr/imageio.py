"""Loading the photos users hand the predictor: any format Pillow reads (JPEG, PNG, WebP, BMP,
HEIC/HEIF through pillow-heif, ...), turned upright by its EXIF orientation and converted to 8-bit RGB whatever its mode (gray,
palette, alpha, CMYK, 16-bit, float). Decompression bombs are refused before decoding. Every
failure is an ImageLoadError whose message is one line naming the file and the reason."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceattr.inputerror import InputError

# What a folder given to `faceattr predict` is searched for; a file named explicitly is tried
# whatever its suffix, so a mislabelled or non-image file gets its own one-line reason.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".tif", ".tiff", ".gif")
# Phones save HEIC by default; Pillow reads it once pillow-heif registers its opener (a pinned
# dependency; should its wheel be missing on some platform, the other formats still load).
try:
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - the dependency is installed with faceattr
    pass
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Bytes per pixel that decoding a photo of each mode and turning it into 8-bit RGB holds at
# once (Pillow keeps RGB, RGBA and CMYK in 4 bytes a pixel; 16-bit and 32-bit gray go through
# an 8-bit gray copy, converted in strips): the memory budget of a request is counted with it.
HELD_BYTES_PER_PIXEL = {"RGB": 4, "L": 5, "P": 5, "1": 5, "I": 9, "F": 9, "CMYK": 8}
HELD_BYTES_PER_PIXEL |= dict.fromkeys(SIXTEEN_BIT, 7) | dict.fromkeys(ALPHA_MODES, 8)
ROTATION_BYTES_PER_PIXEL = 4  # an EXIF rotation makes an upright copy
STRIP_ROWS = 256  # rows of a 16/32-bit gray image converted at a time


class ImageLoadError(InputError):
    """An input that is not a usable image. ``kind`` says which way, for callers that answer
    differently (the web API's status codes): ``missing``, ``not_image``, ``too_large`` or
    ``corrupt`` (the default: truncated, broken or undecodable)."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


ImageSource = str | Path | bytes | Image.Image | np.ndarray
# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
QUARTER_TURNS = (5, 6, 7, 8)


def load_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """An upright 8-bit RGB copy of ``source``: a path, encoded bytes, a PIL image or an array.

    Arrays are (H, W) gray or (H, W, 3|4) RGB[A] in RGB order (convert OpenCV's BGR first):
    uint8 as is, uint16 as 16-bit, floats in [0, 1]. Images over ``max_pixels`` (default
    ``PIL.Image.MAX_IMAGE_PIXELS``) are refused from their header alone, before decoding.
    """
    return load_photo(source, max_pixels)[0]


def load_photo(
    source: ImageSource,
    max_pixels: int | None = None,
    min_side: int | None = None,
    max_bytes: int | None = None,
    factor: int | None = None,
) -> tuple[Image.Image, tuple[float, float]]:
    """``load_image``, decoding a JPEG at a reduced size (1/2, 1/4 or 1/8, straight from its
    DCT, much faster than decoding it whole) while its longer side stays >= ``min_side``, or
    at 1/``factor`` (2, 4 or 8) when that is given.
    A photo whose decoding would hold more than ``max_bytes`` (``decode_bytes``) is refused
    from its header, before decoding.

    Returns the upright RGB image and (sx, sy): photo pixels per image pixel (1.0, 1.0 when
    decoded whole), so coordinates found in the image map back to the photo.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, np.ndarray):
        return to_rgb8(_from_array(source)), (1.0, 1.0)
    if isinstance(source, Image.Image):
        _check_size(source.size, limit, "image")
        return to_rgb8(_upright(source)), (1.0, 1.0)
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        path = Path(source)
        if path.is_dir():
            raise ImageLoadError(f"{label}: is a folder, expected an image file", "missing")
        if not path.is_file():
            raise ImageLoadError(f"{label}: no such file", "missing")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; _check_size refuses those too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                _check_size(im.size, limit, label)
                if max_bytes is not None and (cost := decode_bytes(im)) > max_bytes:
                    raise ImageLoadError(
                        f"{label}: {im.size[0]}x{im.size[1]} {im.mode} image would take about {cost / 1e6:.0f} MB "
                        f"to decode; the limit is {max_bytes / 1e6:.0f} MB (16-bit, transparent and rotated photos "
                        "cost more per pixel)",
                        "too_large",
                    )
                full = im.size
                if factor is not None and factor > 1 and im.format == "JPEG":
                    # rounded down: Pillow picks the largest reduction that keeps the size asked
                    # for, so a rounded-up request would decode one step finer on uneven sides
                    im.draft("RGB", (max(1, full[0] // factor), max(1, full[1] // factor)))
                elif min_side is not None and im.format == "JPEG" and max(full) > 2 * min_side:
                    k = max(full) / min_side
                    im.draft("RGB", (max(1, math.ceil(full[0] / k)), max(1, math.ceil(full[1] / k))))
                # The DCT scales by a whole factor; the reduced sides are rounded up, so the factor
                # (not the ratio of the sides) maps reduced pixels back onto the photo's.
                factor = float(round(full[0] / im.size[0]))
                scale = (factor, factor)
                im.load()
                if _orientation(im) in QUARTER_TURNS:
                    scale = scale[::-1]
                return to_rgb8(_upright(im)), scale
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(
            f"{label}: refused as a possible decompression bomb ({_first_line(e)})", "too_large"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{label}: not an image (or a format Pillow cannot read)", "not_image") from None
    except PermissionError:
        raise ImageLoadError(f"{label}: permission denied", "missing") from None
    except Exception as e:  # truncated data, broken chunks, unsupported modes: Pillow raises many types
        raise ImageLoadError(f"{label}: corrupt or unreadable image ({type(e).__name__}: {_first_line(e)})") from None


def decode_bytes(im: Image.Image) -> int:
    """About how many bytes decoding this opened (not yet loaded) image and converting it to
    upright 8-bit RGB holds at once, at its full size (a reduced JPEG decode may need the whole
    photo later for a small face)."""
    w, h = im.size
    per_pixel = HELD_BYTES_PER_PIXEL.get(im.mode, 8)
    if _orientation(im) not in (1, 0):
        per_pixel += ROTATION_BYTES_PER_PIXEL
    return w * h * per_pixel


def probe_bytes(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, ``decode_bytes``) of encoded image bytes, from the header alone, without
    decoding; None if Pillow cannot identify them (decoding then fails with its own reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return (*im.size, decode_bytes(im))
    except Exception:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:120] if text else "no detail"


def _check_size(size: tuple[int, int], limit: int | None, label: str) -> None:
    w, h = size
    if limit is not None and w * h > limit:
        raise ImageLoadError(
            f"{label}: refused as a possible decompression bomb ({w}x{h} = {w * h:,} pixels, over the limit of "
            f"{limit:,})",
            "too_large",
        )
    if w < 1 or h < 1:
        raise ImageLoadError(f"{label}: empty image ({w}x{h})")


HEADER_EXIF = ("JPEG", "MPO", "TIFF", "WEBP", "HEIF")  # formats whose EXIF is read with the header


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1: upright). Before decoding, only formats that keep EXIF in their
    header are asked: Pillow's getexif() on a PNG decodes the whole image to look for it."""
    if getattr(im, "_im", None) is None and im.format not in HEADER_EXIF:  # not decoded yet
        return 1
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block: treated as upright, as _upright does
        return 1


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block is common in the wild and must not cost
    the photo, so it leaves the image as stored."""
    if _orientation(im) in (0, 1):
        return im  # exif_transpose would still copy the whole photo
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def to_rgb8(im: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode. 16-bit and 32-bit gray are scaled (not clipped) to 0..255;
    transparent areas become white, as a viewer shows them on a page."""
    if im.mode == "RGB":
        return im  # already what the predictor reads, and never written to: no copy
    if im.mode in SIXTEEN_BIT or im.mode in ("I", "F"):
        return _wide_gray_to_l(im).convert("RGB")
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))  # alpha over white, without a second RGBA copy
        return white
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageLoadError(f"colour mode {im.mode} cannot be converted to RGB ({e})") from None


def _wide_gray_to_l(im: Image.Image) -> Image.Image:
    """16-bit or 32-bit gray -> 8-bit gray, in strips of rows, so a large photo never needs a
    float64 copy of itself (a 40-megapixel 16-bit PNG would otherwise take ~1 GB)."""
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    scale = _gray_scale(im)
    for top in range(0, h, STRIP_ROWS):
        strip = np.asarray(im.crop((0, top, w, min(h, top + STRIP_ROWS))), dtype=np.float32)
        out[top : top + len(strip)] = np.clip(np.rint(strip * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _gray_scale(im: Image.Image) -> float:
    """What 16-bit and wide gray values are multiplied by to land in 0..255."""
    if im.mode in SIXTEEN_BIT:
        return 1 / 257.0  # 65535 -> 255
    low, high = im.getextrema()
    if im.mode == "I" and high > 255:
        return 1 / 257.0
    if im.mode == "F" and high <= 1.0:
        return 255.0
    return 1.0


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise ImageLoadError(f"array of shape {a.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageLoadError("array holds NaN or infinite values")
        a = np.clip(np.rint(a * 255.0 if a.max() <= 1.0 else a), 0, 255).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ImageLoadError(f"array of {a.dtype} with values outside 0..255")
        a = a.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))  # uint8 (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
