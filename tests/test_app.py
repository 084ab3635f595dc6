"""app.py: the JSON API through FastAPI's TestClient, the page in a real headless Chromium, no torch."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from fastapi.testclient import TestClient
from PIL import Image

from imgclf.data.readers import read_digits
from imgclf.deploy import uploads
from imgclf.deploy.app import create_app
from imgclf.deploy.predictor import Predictor
from imgclf.errors import UserError

pytestmark = pytest.mark.slow  # every test serves the model the shared digits run trains


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> list[Path]:
    """The first 12 images of the digits test split as PNG files, as a user would upload them."""
    folder = tmp_path_factory.mktemp("pngs")
    images = read_digits(train=False).images[:12, 0].numpy()
    paths = [folder / f"digit_{i:02d}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


@pytest.fixture(scope="module")
def client(digits_onnx) -> TestClient:
    return TestClient(create_app(digits_onnx))


def upload(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_predict_classifies_test_images_as_predict_py_does(client, digits_onnx, digit_pngs):
    response = client.post("/predict", files=upload(digit_pngs), data={"top_k": "3"})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = Predictor(digits_onnx).predict([str(p) for p in digit_pngs], 3)  # the predictor command's own path
    assert [p["filename"] for p in predictions] == [p.name for p in digit_pngs]
    for got, want in zip(predictions, expected, strict=True):
        assert [c["class"] for c in got["top_k"]] == [name for name, _ in want.top_k]
        np.testing.assert_allclose([c["probability"] for c in got["top_k"]], [p for _, p in want.top_k], rtol=1e-6)
    labels = read_digits(train=False).labels[:12].tolist()
    top1 = [int(p["top_k"][0]["class"]) for p in predictions]
    assert sum(a == b for a, b in zip(top1, labels, strict=True)) >= 6  # a real model, not noise
    single = client.post("/predict", files=upload(digit_pngs[:1])).json()["predictions"]
    assert len(single) == 1 and len(single[0]["top_k"]) == 5  # top_k defaults to 5


def test_model_and_health_describe_the_served_file(client, digits_onnx):
    import hashlib

    card = client.get("/model").json()
    assert card["sha256"] == hashlib.sha256(digits_onnx.read_bytes()).hexdigest()
    assert (card["dataset"], card["network"], card["image_size"]) == ("digits", "small_cnn", [8, 8])
    assert card["class_names"] == [str(i) for i in range(10)] and "test/acc" in card["test_metrics"]
    assert client.get("/health").json() == {"status": "ok", "model": "model.onnx"}
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text
    assert "http" not in page.text.replace("http://www.w3.org", "")  # nothing fetched from elsewhere


def test_bad_input_gets_a_4xx_that_says_what_is_wrong(client, digit_pngs, monkeypatch):
    good = digit_pngs[0].read_bytes()
    cases = {  # request-level faults; a bad file is answered per file (tests/test_app_serving.py)
        "missing field": ([("other", ("x.png", good, "image/png"))], {}, 422, "images"),
        "top_k out of range": ([("images", ("d.png", good, "image/png"))], {"top_k": "11"}, 422, "top_k"),
        "top_k not a number": ([("images", ("d.png", good, "image/png"))], {"top_k": "five"}, 422, "top_k"),
    }
    for name, (files, data, status, words) in cases.items():
        response = client.post("/predict", files=files, data=data)
        assert response.status_code == status, (name, response.text)
        assert words in response.json()["error"], (name, response.json())
    monkeypatch.setattr(uploads, "MAX_IMAGE_BYTES", len(good) - 1)
    response = client.post("/predict", files=upload(digit_pngs[:1]))
    assert response.status_code == 413 and "limit" in response.json()["error"]
    monkeypatch.undo()
    huge = client.post("/predict", content=b"x", headers={"content-length": str(uploads.max_request_bytes() + 1),
                                                          "content-type": "multipart/form-data; boundary=x"})
    assert huge.status_code == 413
    # The server is still there and still right.
    assert client.get("/health").status_code == 200
    assert client.post("/predict", files=upload(digit_pngs[:2])).status_code == 200


def test_no_model_file_names_the_commands_that_make_one(tmp_path, monkeypatch):
    missing = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="dvc pull model.onnx.dvc") as error:
        create_app(missing)
    assert "export.py" in str(error.value)
    monkeypatch.setattr(sys, "argv", ["app.py", "--model", str(missing)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "app.py"), run_name="__main__")
    assert str(exit_info.value.code).startswith("error: Model file") and "dvc pull" in str(exit_info.value.code)


def test_the_app_runs_without_torch(digits_onnx, digit_pngs):
    script = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises
              "from fastapi.testclient import TestClient\n"
              "from imgclf.deploy.app import create_app\n"
              f"client = TestClient(create_app({str(digits_onnx)!r}))\n"
              f"files = [('images', ('d.png', open({str(digit_pngs[0])!r}, 'rb').read(), 'image/png'))]\n"
              "response = client.post('/predict', files=files)\n"
              "assert response.status_code == 200, response.text\n"
              "print(response.json()['predictions'][0]['top_k'][0]['class'])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in [str(i) for i in range(10)]


# --------------------------------------------------------------------------- the page in a real browser
def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def served(digits_onnx):
    """The app on a real uvicorn server on a port the system picks, in a thread of this process."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(digits_onnx), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def headless_chromium():
    """A WebDriver on Debian's headless Chromium (chromium() found it)."""
    from selenium import webdriver

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


@pytest.mark.skipif(chromium() is None, reason="no headless browser: apt-get install chromium chromium-driver "
                                               "(.ci/run does)")
def test_page_classifies_an_uploaded_image_in_headless_chromium(served, digits_onnx, digit_pngs):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium()
    try:
        driver.get(served)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "small_cnn" in d.find_element(By.ID, "card").text)
        assert "digits" in driver.find_element(By.ID, "card").text
        driver.find_element(By.ID, "files").send_keys(str(digit_pngs[3]))
        result = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result .top1 .label"))
        expected = Predictor(digits_onnx).predict([str(digit_pngs[3])], 1)[0].top_k[0][0]
        assert result[0].text == expected
        assert len(driver.find_elements(By.CSS_SELECTOR, ".result li")) == 5
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()


@pytest.mark.skipif(chromium() is None, reason="no headless browser: apt-get install chromium chromium-driver "
                                               "(.ci/run does)")
def test_page_shows_six_results_and_one_error_line_for_six_images_and_a_text_file(served, fashion_mnist_real,
                                                                                   tmp_path):
    import gzip

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    raw = gzip.decompress((fashion_mnist_real / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:6]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"fashion_{i}.png")
        Image.fromarray(image).save(paths[-1])
    paths.insert(3, tmp_path / "notes.txt")  # the stray file among them
    paths[3].write_text("not a picture\n")
    driver = headless_chromium()
    try:
        driver.get(served)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "small_cnn" in d.find_element(By.ID, "card").text)
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))  # seven files at once
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results > *")) == 7)
        results = driver.find_elements(By.CSS_SELECTOR, "#results .result")
        assert [r.get_attribute("data-filename") for r in results] == [p.name for p in paths if p.suffix == ".png"]
        assert all(len(r.find_elements(By.CSS_SELECTOR, "li")) == 5 for r in results)
        errors = driver.find_elements(By.CSS_SELECTOR, "#results .file-error")
        assert len(errors) == 1 and errors[0].text.startswith("error: notes.txt is not an image")
        assert driver.find_element(By.ID, "error").text == ""  # no request-level error
    finally:
        driver.quit()
