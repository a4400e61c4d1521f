"""The demo page in a real headless browser: Debian's chromium driven by
selenium through chromedriver. Skipped where either is not installed (CI
installs them: .ci/run); Selenium Manager never runs, so nothing is downloaded."""
import os

import pytest
from PIL import Image

from demo.conftest import expected_cards, model_of

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No network: no QUIC, no background updates, sync or first-run pages.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1280,1000")
WAIT_S = 30

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")


@pytest.fixture
def browser(fresh_dir):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={fresh_dir}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def shown_titles(driver, section: str):
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, f".{section} .title")]


# Each image's src, naturalWidth and its top-left pixel as drawn (a truncated
# file can still have a width, from its header, but not its pixels).
IMAGES_SCRIPT = """
return [...document.images].map(image => {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth || 1;
  canvas.height = image.naturalHeight || 1;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return [image.getAttribute("src"), image.naturalWidth,
          Array.from(context.getImageData(0, 0, 1, 1).data.slice(0, 3))];
});
"""


def images_loaded(driver) -> list:
    """(src, naturalWidth, top-left RGB) of every image of the page, once all have settled."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return [...document.images].every(image => image.complete)"))
    return driver.execute_script(IMAGES_SCRIPT)


def photos_shown_whole(images, dataset_dir) -> bool:
    """Every dataset photo on the page decoded, to the file's own first pixel."""
    photos = [(src, width, rgb) for src, width, rgb in images if src.startswith("/images/")]
    return all(width > 0 and tuple(rgb) == Image.open(
        dataset_dir / "images" / f"{src.rsplit('/', 1)[1]}.png").convert("RGB").getpixel((0, 0))
        for src, width, rgb in photos)


def expected(answer):
    """The titles the page must show for an answer, and how many photos."""
    shown = expected_cards(answer)
    return [card[1] for card in shown], sum(card[2] is not None for card in shown)


def test_a_search_and_a_photo_upload_in_a_browser(browser, live_page, model_server, dataset_dir,
                                                  tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    model = model_of(model_server)
    browser.get(live_page + "/")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("red mug")
    box.submit()
    WebDriverWait(browser, WAIT_S).until(expected_conditions.title_contains("Search: red mug"))
    titles, photos = expected(model.ask(text="red mug"))
    assert shown_titles(browser, "answer") == titles
    images = images_loaded(browser)
    assert len(images) == photos and photos_shown_whole(images, dataset_dir), images

    photo = tmp_path / "blue.png"
    Image.new("RGB", (64, 48), (30, 40, 220)).save(photo)
    browser.get(live_page + "/")
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo))
    browser.find_element(By.CSS_SELECTOR, "form[action='/image'] button").click()
    WebDriverWait(browser, WAIT_S).until(expected_conditions.title_contains("Photo search"))
    titles, photos = expected(model.ask(image=photo.read_bytes()))
    assert shown_titles(browser, "answer") == titles
    images = images_loaded(browser)
    uploaded = images[0]
    assert uploaded[0].startswith("data:image/png;base64,") and uploaded[1:] == [64, [30, 40, 220]]
    assert len(images) == 1 + photos and photos_shown_whole(images, dataset_dir), images
