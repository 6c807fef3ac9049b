"""The MLflow UI in a real browser: Debian's Chromium, headless, driven by Selenium, opens a
run's metric charts or a registered model's version page and waits until they are drawn.

What the MLflow 3.17 UI shows, found by driving it:
- a run's page is #/experiments/<id>/runs/<run id>; its "Model metrics" tab is that path
  plus /model-metrics. The tab groups charts by the key's prefix ("validation/loss" is the
  chart "loss" in the section "validation"); each chart is a card
  [data-testid="experiment-view-compare-runs-card"] whose <h4> has the full key as its
  title attribute, and a Plotly plot whose traces are SVG paths. Cards below the fold are
  not in the page at all until scrolled to, so the tab's "Search metric charts" box,
  which keeps the charts whose key contains the text typed, brings the chart to the top.
  The UI remembers that text: the next visit of the tab, of any run, still filters by it.
- a registered model's version page is #/models/<name>/versions/<version>: a breadcrumb
  [data-testid="breadcrumbRegisteredModel"] with the model's name and an <h2> "Version N".
The page's scripts load a few megabytes and render in several seconds on a busy machine.
"""

import contextlib
import shutil
import tempfile
import time
import urllib.parse
from typing import Iterator

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW_SIZE = "1400,1000"  # pixels; wide enough for the UI's side bar, charts and assistant panel
BROWSER_ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={WINDOW_SIZE}",
)  # fmt: skip
PAGE_TEXT_SHOWN = 1500  # characters of the page's text a failure message quotes

FIND_SEARCH_BOX = """return document.querySelector("input[placeholder='Search metric charts']");"""
# Finds the card of one metric's chart, scrolled into view (the UI draws only the charts a
# reader can see), once its plot has drawn a line or a point (one step draws no line).
FIND_METRIC_CHART = """
const key = arguments[0];
const cards = [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')];
const card = cards.find(card => card.querySelector('h4[title]')?.getAttribute('title') === key);
if (!card) return null;
card.scrollIntoView({block: 'center'});
const drawn = [...card.querySelectorAll('.js-plotly-plot g.trace g.lines path, .js-plotly-plot g.trace g.points path')];
return drawn.some(path => (path.getAttribute('d') || '').length > 1) ? card : null;
"""
LIST_CHART_TITLES = """
return [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"] h4[title]')].map(h => h.title);
"""
IS_MODEL_VERSION_SHOWN = """
const [name, version] = arguments;
const crumb = document.querySelector('[data-testid="breadcrumbRegisteredModel"]');
const headings = [...document.querySelectorAll('h2')].map(h => h.textContent.trim());
return crumb !== null && crumb.textContent.trim() === name && headings.includes('Version ' + version);
"""


@contextlib.contextmanager
def open_browser() -> Iterator[webdriver.Chrome]:
    """Yield a headless Chromium webdriver with a throwaway profile; quit it on exit.

    The chromedriver is named explicitly, so that selenium-manager downloads nothing.
    """
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (*BROWSER_ARGUMENTS, f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def read_page_text(driver: webdriver.Chrome) -> str:
    """The start of the page's visible text, for failure messages."""
    text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:PAGE_TEXT_SHOWN]


def wait_for_script(driver: webdriver.Chrome, script: str, args: tuple, timeout: float):
    """Run `script` in the page until it returns something truthy; return that, or None
    once `timeout` seconds have passed."""
    with contextlib.suppress(TimeoutException):
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda driver: driver.execute_script(script, *args))
    return None


def search_charts(box: WebElement, text: str) -> None:
    """Replace the text of the charts' search box with `text`. Selecting and deleting, not
    WebElement.clear(): the page's script does not see clear() and would keep the old text."""
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def wait_for_metric_chart(driver: webdriver.Chrome, server_url: str, experiment_id: str, run_id: str, metric_key: str, timeout: float) -> WebElement:
    """Open the run's "Model metrics" tab and wait until the chart of `metric_key` has
    drawn its plot; return the chart's card (a WebElement, for `card.screenshot(path)`).

    Leaves the tab's search box holding `metric_key` (see the module's docstring).

    Raises AssertionError naming the metric, the page, the charts found and the page's text
    when no such chart is drawn within `timeout` seconds.
    """
    url = f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics"
    deadline = time.monotonic() + timeout
    driver.get(url)
    box = wait_for_script(driver, FIND_SEARCH_BOX, (), timeout)
    card = None
    if box is not None:
        search_charts(box, metric_key)
        card = wait_for_script(driver, FIND_METRIC_CHART, (metric_key,), max(deadline - time.monotonic(), 0))
    if card is None:
        titles = driver.execute_script(LIST_CHART_TITLES)
        raise AssertionError(f"no chart of metric {metric_key!r} was drawn on {url} within {timeout} s; charts found by searching for it: {titles}; page: {read_page_text(driver)}")
    return card


def wait_for_registered_model(driver: webdriver.Chrome, server_url: str, name: str, version: int | str, timeout: float) -> None:
    """Open the page of version `version` of registered model `name` and wait until it
    shows the model's name and the version's heading.

    Raises AssertionError naming the model, the page and the page's text when it does not
    within `timeout` seconds.
    """
    url = f"{server_url.rstrip('/')}/#/models/{urllib.parse.quote(name, safe='')}/versions/{version}"
    driver.get(url)
    if not wait_for_script(driver, IS_MODEL_VERSION_SHOWN, (name, str(version)), timeout):
        raise AssertionError(f"version {version} of registered model {name!r} was not shown on {url} within {timeout} s; page: {read_page_text(driver)}")


def save_screenshot(driver: webdriver.Chrome, path: str) -> str:
    """Save what the browser's window shows as a PNG at `path`; return `path`.

    Raises AssertionError if the browser could not write it.
    """
    if not driver.save_screenshot(path):
        raise AssertionError(f"the browser could not save a screenshot to {path}")
    return path
