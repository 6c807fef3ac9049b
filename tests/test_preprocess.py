"""MNIST-style preprocessing: decode_png and to_mnist."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_classifier.preprocess import decode_png, to_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    pixels = image.astype(np.float64)
    total = pixels.sum()
    rows, columns = np.indices(pixels.shape)
    return (rows * pixels).sum() / total, (columns * pixels).sum() / total


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def draw_seven() -> np.ndarray:
    """A 28 x 28 "7" as MNIST has them: white on black, 20 rows tall, centre of mass
    moved by whole pixels to within half a pixel of (14, 14)."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    draw.line([(8, 5), (19, 5), (12, 23)], fill=255, width=3)
    pixels = np.asarray(image)
    rows = np.nonzero(pixels.any(axis=1))[0]
    assert rows.max() - rows.min() + 1 == 20
    row, column = centre_of_mass(pixels)
    return np.roll(pixels, (round(14 - row), round(14 - column)), axis=(0, 1))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_digit_drawn_large_black_on_white_off_centre_comes_back_as_mnist_has_it():
    original = draw_seven()
    # 10.5 times larger, sharp-edged, black on white: shrinking it back must anti-alias.
    large = np.asarray(Image.fromarray(255 - original).resize((294, 294), Image.Resampling.NEAREST))
    canvas = np.full((600, 800), 255, dtype=np.uint8)
    canvas[30:324, 460:754] = large  # near the top right corner

    result = to_mnist(canvas)

    assert result.shape == (28, 28) and result.dtype == np.uint8
    assert correlation(result, original) > 0.9
    row, column = centre_of_mass(result)
    # MNIST's convention, measured on its test set: every centre of mass within half a pixel of (14, 14).
    assert abs(row - 14) <= 0.5 and abs(column - 14) <= 0.5
    rows, columns = np.nonzero(result)
    assert max(np.ptp(rows), np.ptp(columns)) + 1 == 20
    assert result.max() == 255 and result[0].max() == 0  # white on black
    assert ((result > 0) & (result < 255)).sum() >= 10  # anti-aliased: the sharp edges became grey levels


def test_an_mnist_digit_goes_through_almost_unchanged():
    original = draw_seven()
    assert correlation(to_mnist(original), original) > 0.99


def test_the_aspect_ratio_is_kept_in_the_20_pixel_box():
    canvas = np.zeros((300, 500), dtype=np.uint8)
    canvas[100:140, 50:450] = 255  # a bar 400 wide, 40 tall: 10 to 1
    rows, columns = np.nonzero(to_mnist(canvas))
    assert np.ptp(columns) + 1 == 20
    assert np.ptp(rows) + 1 == 2


def test_a_digit_whose_mass_is_off_its_box_centre_stays_whole_inside_the_frame():
    # A long faint tail and a heavy blob: centring the mass would push the box out of the frame.
    canvas = np.zeros((200, 200), dtype=np.uint8)
    canvas[10:20, 10:190] = 20
    canvas[10:20, 10:28] = 255  # the blob: the first tenth of the digit's width
    result = to_mnist(canvas)
    columns = np.nonzero(result.any(axis=0))[0]
    assert columns.min() == 8 and columns.max() == 27  # moved as far as the frame allows, not further


def test_an_empty_canvas_gives_all_black():
    for canvas in (np.full((280, 280), 255, np.uint8), np.zeros((280, 280), np.uint8)):
        result = to_mnist(canvas)
        assert result.shape == (28, 28) and result.dtype == np.uint8 and not result.any()
    transparent = decode_png(png_bytes(Image.new("RGBA", (280, 280), (0, 0, 0, 0))))
    assert not to_mnist(transparent).any()


@pytest.mark.parametrize("ink", [(255, 255, 255, 255), (0, 0, 0, 255)], ids=["white strokes", "black strokes"])
def test_a_transparent_browser_canvas_is_composited_so_that_strokes_stay_visible(ink):
    original = draw_seven()
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    alpha = Image.fromarray(np.kron(original, np.ones((10, 10), dtype=np.uint8)))
    canvas.paste(Image.new("RGBA", (280, 280), ink), mask=alpha)

    decoded = decode_png(png_bytes(canvas))

    assert decoded.shape == (280, 280) and decoded.dtype == np.uint8
    assert correlation(to_mnist(decoded), original) > 0.9


def test_colour_and_16_bit_pngs_become_8_bit_grayscale():
    colour = Image.new("RGB", (40, 30), (255, 255, 255))
    ImageDraw.Draw(colour).line([(5, 5), (30, 20)], fill=(200, 0, 0), width=3)
    decoded = decode_png(png_bytes(colour))
    assert decoded.shape == (30, 40) and decoded[0, 0] == 255 and decoded[12, 17] < 100

    deep = Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16))
    assert decode_png(png_bytes(deep)).tolist() == [[0, 255], [128, 1]]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GIF89a not a png at all", "not a PNG"),
        (b"", "not a PNG"),
        (png_bytes(Image.new("L", (64, 64), 128))[:60], "corrupt or truncated"),
        (png_bytes(Image.new("L", (5000, 10), 0)), "5000 x 10 pixels, larger than the 4096 x 4096 allowed"),
    ],
    ids=["not png", "empty", "truncated", "too large"],
)
def test_a_bad_image_is_one_sentence(data, message):
    with pytest.raises(ValueError, match=message) as raised:
        decode_png(data)
    assert "\n" not in str(raised.value)


def test_a_garbled_png_body_is_refused():
    data = bytearray(png_bytes(Image.fromarray(draw_seven())))
    data[40:60] = bytes(20)  # inside the image data: its checksum no longer matches
    with pytest.raises(ValueError, match="corrupt or truncated"):
        decode_png(bytes(data))


@pytest.mark.parametrize("image", [np.zeros((2, 28, 28)), np.zeros((0, 5)), np.array([["a"]]), np.full((4, 4), np.nan)])
def test_to_mnist_refuses_what_is_not_a_grayscale_drawing(image):
    with pytest.raises(ValueError, match="a drawing must"):
        to_mnist(image)


def test_preprocessing_does_not_import_torch():
    code = "import sys, mnist_classifier.preprocess; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
