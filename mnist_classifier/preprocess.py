"""Preparing a drawing as MNIST's digits were prepared: the one place that does it.

LeCun's description of MNIST: each digit's bounding box was scaled to fit a 20 x 20 box,
keeping its aspect ratio, with anti-aliasing (hence grey levels), then placed in a 28 x 28
image so that its centre of mass is at the centre, white on black. Measured on MNIST's
10,000 test digits, "the centre" is pixel (14, 14), counting rows and columns from 0: every
digit's centre of mass lies within half a pixel of it, because digits were moved by whole
pixels. `to_mnist` does the same, so a drawing from the serving page or a PNG sent to the
server reaches the model looking like the digits it learnt from.

numpy and Pillow only: the server imports this without torch.
"""

import io
import warnings

import numpy as np
from PIL import Image

SIDE = 28  # MNIST images are 28 x 28
BOX = 20  # the digit's bounding box is scaled to fit 20 x 20
CENTRE = 14.0  # row and column of MNIST's centre of mass (0-based), measured on its test set
MAX_SIDE = 4096  # larger images are refused before being decoded
INK_THRESHOLD = 13  # 5 % of full scale: lighter differences from the background count as background
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG into an H x W uint8 grayscale array.

    Colour is turned into luma. A transparent image (a browser canvas) is composited onto
    black when its visible strokes are light and onto white when they are dark, so that
    the strokes stay visible whichever colour the page drew with.

    Args:
        data: the PNG file's bytes.

    Raises:
        ValueError: the bytes are not a PNG, the PNG is corrupt or truncated, or a side is
            over 4096 pixels; the message is one sentence.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("the image is not a PNG (it does not start with the PNG signature)")
    try:
        # Pillow warns, then raises, on images it deems decompression bombs; our own
        # size limit below is stricter, so its warning is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["PNG"])
            check_size(image.size)
            image.load()
    except ValueError:
        raise
    except Image.UnidentifiedImageError:  # its message names an in-memory object, not the fault
        raise ValueError("the PNG image is corrupt or truncated: its header cannot be read") from None
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"the PNG image is corrupt or truncated: {error}") from None
    return to_gray(image)


def check_size(size: tuple[int, int]) -> None:
    """Refuse an image with a side over MAX_SIDE pixels, before decoding it."""
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"the image is {width} x {height} pixels, larger than the {MAX_SIDE} x {MAX_SIDE} allowed")


def to_gray(image: Image.Image) -> np.ndarray:
    """Return a decoded image as uint8 grayscale, transparency composited (see decode_png)."""
    if image.mode.startswith("I"):
        # 16-bit grayscale: Pillow's conversion to 8 bits clips instead of scaling.
        return (np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
    gray = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
    visible = alpha.sum()
    strokes_light = visible > 0 and (gray * alpha).sum() / visible > 127.5
    background = 0.0 if strokes_light or visible == 0 else 255.0
    return (gray * alpha + background * (1 - alpha)).round().astype(np.uint8)


def to_mnist(image: np.ndarray) -> np.ndarray:
    """Turn a grayscale drawing of any size into a 28 x 28 MNIST-style digit.

    The background is the median of the image's border: a light one is inverted so that the
    digit is white on black, and its level is subtracted. The ink's bounding box (pixels
    over 5 % of full scale) is scaled to fit 20 x 20 keeping its aspect ratio, anti-aliased,
    and placed in 28 x 28 so that its centre of mass is within half a pixel of (14, 14),
    moved by whole pixels and kept inside the frame, as MNIST's digits were.

    Args:
        image: H x W grayscale values from 0 (black) to 255 (white).

    Returns:
        A 28 x 28 uint8 array, white digit on black; all zeros when there is no ink.

    Raises:
        ValueError: the array is not a non-empty 2-D array of finite numbers.
    """
    ink = extract_ink(image)
    rows, columns = np.nonzero(ink > INK_THRESHOLD)
    if rows.size == 0:
        return np.zeros((SIDE, SIDE), dtype=np.uint8)
    digit = fit_box(ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1])
    return place_by_centre_of_mass(digit)


def extract_ink(image: np.ndarray) -> np.ndarray:
    """Return the drawing as float ink over a black background: white on black, background 0."""
    pixels = np.asarray(image)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"a drawing must be a non-empty 2-D grayscale array, not one of shape {list(pixels.shape)}")
    if pixels.dtype.kind not in "iuf" or not np.isfinite(pixels).all():
        raise ValueError("a drawing must hold finite grayscale values from 0 to 255")
    pixels = pixels.astype(np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    if background > 127.5:
        pixels, background = 255 - pixels, 255 - background
    return np.clip(pixels - background, 0, 255)


def fit_box(digit: np.ndarray) -> np.ndarray:
    """Scale a cropped digit so that its longer side is 20 pixels, keeping the aspect ratio,
    and round it to whole grey levels.

    Shrinking averages the area each output pixel covers (Pillow's box filter), which is
    the anti-aliasing that turns a sharp drawing's edges into grey levels; enlarging a
    small drawing interpolates bilinearly instead of repeating pixels.
    """
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    resized = Image.fromarray(digit.astype(np.float32)).resize(size, resample)
    return np.asarray(resized, dtype=np.float64).round().clip(0, 255)


def place_by_centre_of_mass(digit: np.ndarray) -> np.ndarray:
    """Paste a digit of at most 20 x 20 into 28 x 28 with its centre of mass at (14, 14),
    moved by whole pixels and clipped to stay inside the frame.

    The centre of mass is that of the whole grey levels pasted, so the result's own is
    within half a pixel of (14, 14) whenever the frame does not clip the move.
    """
    height, width = digit.shape
    total = digit.sum()
    if total == 0:  # ink too faint and sparse to survive the scaling
        return np.zeros((SIDE, SIDE), dtype=np.uint8)
    centre_row = (digit.sum(axis=1) * np.arange(height)).sum() / total
    centre_column = (digit.sum(axis=0) * np.arange(width)).sum() / total
    top = min(max(int(np.floor(CENTRE - centre_row + 0.5)), 0), SIDE - height)
    left = min(max(int(np.floor(CENTRE - centre_column + 0.5)), 0), SIDE - width)
    canvas = np.zeros((SIDE, SIDE), dtype=np.uint8)
    canvas[top : top + height, left : left + width] = digit
    return canvas
