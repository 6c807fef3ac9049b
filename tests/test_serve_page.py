"""The drawing page in a real browser: Debian's Chromium, headless, draws the strokes of a
real MNIST test digit on the canvas, and the page shows the digit's label.

The server is the real one (uvicorn on a loopback port) serving a release trained for one
epoch on part of real MNIST. Without Chromium, chromedriver or MNIST the test is skipped
saying why, unless TORCHEXP_REQUIRE_BROWSER=1 (CI), where that is a failure. The page's
files ship with mnist_classifier, whose Runner's serve_page names them.
"""

import base64
import io
import os
import re
import shutil
import tempfile

import httpx
import numpy as np
import pytest
from conftest import REPO, read_package_data
from PIL import Image, ImageDraw
from serve_fixtures import NAME, build_app, make_release, serving_in_a_thread

from mnist_classifier.data import MNISTClassifierData, read_mnist

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MNIST_PATH = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets"))
PAGE_FOLDER = os.path.join(REPO, "mnist_classifier", "page")  # what MNISTClassifierRunner.serve_page names
SCALE = 10  # the page's canvas is 280 x 280: ten canvas pixels per MNIST pixel
INK = 128  # MNIST pixels at least this bright become strokes
CANDIDATES = 50  # test digits tried, in order, for one the model gets right


def read_pen_width() -> int:
    """The page's pen width, from its script, so that the strokes drawn here match it."""
    with open(os.path.join(PAGE_FOLDER, "page.js"), encoding="utf-8") as file:
        return int(re.search(r"const PEN_WIDTH = (\d+);", file.read())[1])


def require(available: bool, reason: str) -> None:
    """Skip (or, under TORCHEXP_REQUIRE_BROWSER=1, fail) when something needed is missing."""
    if available:
        return
    if os.environ.get("TORCHEXP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and TORCHEXP_REQUIRE_BROWSER=1 requires the browser test to run")
    pytest.skip(reason)


class FirstImagesData(MNISTClassifierData):
    """Real MNIST cut to its first 6,000 training and 1,000 validation images: one epoch of
    the MLP learns enough in a few seconds."""

    def load_datasets(self, data_path: str) -> None:
        super().load_datasets(data_path)
        for split, size in (("train", 6000), ("validation", 1000)):
            self.datasets[split] = tuple(tensor[:size] for tensor in self.datasets[split])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """The real server, on a free loopback port, serving a release trained on real MNIST."""
    require(os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver")
    require(os.path.isdir(os.path.join(MNIST_PATH, "MNIST", "raw")), f"real MNIST is not in {MNIST_PATH}/MNIST/raw")
    app = build_app(make_release(str(tmp_path_factory.mktemp("page")), data_path=MNIST_PATH, data_class=FirstImagesData))
    with serving_in_a_thread(app) as host_port:
        yield f"http://{host_port}/"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1000,900", f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    # An explicit chromedriver: selenium-manager downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def find_strokes(image: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of each horizontal run of bright pixels."""
    strokes = []
    for row, pixels in enumerate(image >= INK):
        columns = np.flatnonzero(pixels)
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if len(columns) else []:
            strokes.append((row, int(run[0]), int(run[-1])))
    return strokes


def canvas_point(row: int, column: int) -> tuple[int, int]:
    """The centre of an MNIST pixel on the 280 x 280 canvas, as (x, y)."""
    return column * SCALE + SCALE // 2, row * SCALE + SCALE // 2


def render_strokes(strokes: list[tuple[int, int, int]], pen: int) -> bytes:
    """A PNG of the strokes drawn as the page draws them: white round pen on black."""
    canvas = Image.new("L", (28 * SCALE, 28 * SCALE), 0)
    draw = ImageDraw.Draw(canvas)
    for row, first, last in strokes:
        start, end = canvas_point(row, first), canvas_point(row, last)
        draw.line([start, end], fill=255, width=pen)
        for x, y in (start, end):
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def choose_digit(url: str, pen: int) -> tuple[list, int]:
    """The first MNIST test digit whose drawn strokes the server, through its own PNG
    path, classifies correctly: (strokes, label)."""
    images, labels = read_mnist(MNIST_PATH, train=False)
    with httpx.Client(base_url=url, timeout=30) as client:
        for image, label in zip(images[:CANDIDATES].numpy(), labels[:CANDIDATES].tolist()):
            strokes = find_strokes(image)
            png = base64.b64encode(render_strokes(strokes, pen)).decode()
            answer = client.post(f"v1/models/{NAME}:predict", json={"instances": [{"b64": png}]})
            assert answer.status_code == 200, answer.text
            if answer.json()["predictions"][0]["label"] == label:
                return strokes, label
    pytest.fail(f"the model got none of the first {CANDIDATES} drawn test digits right")


def draw_on_page(driver, strokes: list[tuple[int, int, int]]) -> None:
    """Draw the strokes with the browser's own pointer input, one pointer stroke per run."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    left, top, width = driver.execute_script(
        "const pad = document.getElementById('pad'); const box = pad.getBoundingClientRect();"
        "return [box.left + pad.clientLeft, box.top + pad.clientTop, pad.clientWidth];"
    )
    assert width == 28 * SCALE
    actions = ActionBuilder(driver, duration=0)
    for row, first, last in strokes:
        (x0, y), (x1, _) = canvas_point(row, first), canvas_point(row, last)
        actions.pointer_action.move_to_location(left + x0, top + y).pointer_down()
        actions.pointer_action.move_to_location(left + x1, top + y).pointer_up()
    actions.perform()


def test_drawing_a_real_mnist_digit_shows_its_label(server_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    strokes, label = choose_digit(server_url, read_pen_width())
    browser.get(server_url)
    assert browser.title == f"Draw a digit: {NAME}"
    draw_on_page(browser, strokes)
    body = browser.find_element(By.TAG_NAME, "body")
    shown = browser.find_element(By.ID, "label")
    WebDriverWait(browser, 30).until(lambda _: body.get_attribute("data-busy") == "false" and shown.text != "-")
    assert browser.find_element(By.ID, "status").text == ""
    assert shown.text == str(label)
    bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities li")
    assert len(bars) == 10
    assert [bar.get_attribute("class") for bar in bars].index("best") == label
    assert bars[label].get_attribute("aria-label").startswith(f"digit {label}: ")
    # The 28 x 28 image the model received is drawn beside the canvas.
    lit = browser.execute_script(
        "const view = document.getElementById('input'); const data = view.getContext('2d').getImageData(0, 0, view.width, view.height).data;"
        "let lit = 0; for (let i = 0; i < data.length; i += 4) { if (data[i] > 128) lit++; } return lit;"
    )
    assert lit > 0
    browser.find_element(By.ID, "clear").click()
    assert shown.text == "-"


def test_the_page_is_installed_with_mnist_classifier():
    """setup.py ships the page's files as package data of mnist_classifier, beside the
    Runner whose serve_page names them."""
    installed = read_package_data()
    assert sorted(installed["mnist_classifier"]) == sorted(f"page/{name}" for name in os.listdir(PAGE_FOLDER))
    assert "torchexp.serving" not in installed
