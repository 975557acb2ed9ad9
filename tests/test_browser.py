"""The Space in a real browser: Debian's Chromium driven by selenium (Playwright's browser download needs the
internet; `apt-get install chromium chromium-driver` works offline from the Debian mirror).

Screenshots are saved under $FT_PLUGIN_ARTIFACTS (default outputs/test-artifacts/) for people to look at.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.test_space import LABELS, ROOT, space  # noqa: F401  (the running app fixture)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("FT_PLUGIN_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium is not installed: `apt-get install -y chromium chromium-driver` (Debian) to run browser tests",
)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"space_{name}.png"
    driver.save_screenshot(str(path))
    return path


def open_tab(driver, title: str) -> None:
    tab = next(e for e in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if e.text.strip() == title)
    tab.click()


def test_type_a_sentence_click_predict_and_read_the_label(space, browser):  # noqa: F811
    _, url = space
    browser.get(url + "?__theme=light")
    wait = WebDriverWait(browser, 60)
    text = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#predict-text textarea")))
    assert "ft-plugin" in browser.find_element(By.TAG_NAME, "h1").text
    text.send_keys("@united thanks for the quick rebooking, the crew was lovely")
    browser.find_element(By.ID, "predict-button").click()
    # gr.Label shows the top label as a heading above the bars once the prediction arrives
    top = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#scores h2, #scores .output-class"))
    wait.until(lambda d: top[0].text.strip() in LABELS)
    shown = top[0].text.strip()
    bars = browser.find_element(By.ID, "scores").text
    assert shown in LABELS and all(label in bars for label in LABELS)
    assert screenshot(browser, "predict").stat().st_size > 10_000


def test_train_a_tiny_job_in_the_browser(space, browser, tiny_model_dir, tiny_csv):  # noqa: F811
    app, _ = space
    before = len(app.RUNNER.jobs)
    open_tab(browser, "Train")
    wait = WebDriverWait(browser, 120)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#train-file input[type=file]"))
    upload.send_keys(str(tiny_csv))
    wait.until(lambda d: ".csv" in d.find_element(By.ID, "train-file").text)  # the name shows once uploaded
    base = browser.find_element(By.CSS_SELECTOR, "#train-base input")
    base.send_keys(Keys.CONTROL, "a")
    base.send_keys(str(tiny_model_dir), Keys.ENTER)
    for elem_id, value in (("max-samples", "96"), ("epochs", "2")):
        field = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value, Keys.TAB)
    browser.find_element(By.ID, "train-button").click()
    wait.until(lambda d: "now in the Predict tab" in d.find_element(By.ID, "train-status").text)
    job = app.RUNNER.jobs[-1]
    assert len(app.RUNNER.jobs) == before + 1 and job.state == "finished"
    assert job.options["model_name_or_path"] == str(tiny_model_dir) and job.max_steps == 12  # 96 / 16 * 2
    screenshot(browser, "train")
    open_tab(browser, "Compare")
    wait.until(lambda d: job.name in d.find_element(By.ID, "runs-table").text)
    screenshot(browser, "compare")


def test_a_second_job_is_queued_with_a_notice_and_cancel_frees_the_queue(space, browser, tiny_model_dir, tiny_csv):  # noqa: F811
    from tests.test_space import train

    app, url = space
    before = len(app.RUNNER.jobs)
    other_user = api_client(url)  # another session's long job
    long_job = train(other_user, tiny_csv, str(tiny_model_dir), epochs=500, max_samples=32, batch_size=4)
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: app.RUNNER.current is not None and app.RUNNER.current.step > 0)
    open_tab(browser, "Train")
    browser.find_element(By.ID, "train-button").click()  # the form still holds the tiny job of the test above
    notice = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".toast-body") if "queued" in e.text])
    assert "is training: your job is queued" in notice[0].text
    wait.until(lambda d: "Queued: waiting for" in d.find_element(By.ID, "train-status").text)
    screenshot(browser, "queued")
    assert len(app.RUNNER.jobs) == before + 1  # only the long job has started
    next(e for e in browser.find_elements(By.TAG_NAME, "button") if e.text.strip() == "Cancel").click()
    time.sleep(2.0)
    assert app.RUNNER.current is app.RUNNER.jobs[before]  # the browser cannot cancel another user's job
    assert other_user.predict(api_name="/cancel").startswith("Cancelling")
    assert long_job.result(timeout=120)[2]["state"] == "cancelled"
    wait.until(lambda d: len(app.RUNNER.jobs) == before + 2 and not app.RUNNER.jobs[-1].is_alive())
    assert app.RUNNER.jobs[-1].state == "finished"  # the queued browser job ran once the queue was free
    wait.until(lambda d: app.RUNNER.jobs[-1].name in d.find_element(By.ID, "train-status").text)


def api_client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)
