"""report.html opens as a page in a real browser (headless Chromium): it loads, every figure decodes, it is not blank."""

import io
import os
import shutil

import pytest

from analysis.report import write_report
from test_analysis_fixtures import write_root

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_the_html_report_renders_with_every_image(browser, tmp_path):
    root = write_root(tmp_path / "results")
    paths = write_report(root, tmp_path / "report", log=lambda msg: None)
    browser.get(paths["html"].resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title.startswith("Reproduction report")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    assert len(images) >= 5
    broken = [alt for complete, width, height, alt in images if not (complete and width > 0 and height > 0)]
    assert not broken, f"images that did not decode: {broken}"
    assert browser.execute_script("return document.querySelectorAll('table').length") >= 3

    from PIL import Image

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    low, high = shot.getextrema()
    histogram = shot.histogram()
    assert high - low > 100  # text and figures on a white page, not one flat colour
    assert max(histogram) < 0.995 * sum(histogram)  # not (almost) every pixel the same
