"""The web page at / in a real headless Chromium (Debian's chromium driven by Playwright):
it loads, lists the models, and an uploaded or dropped Fashion-MNIST test image shows the
right label with a bar chart and the latency (issue #4's browser check)."""
import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

import reference
from test_fashion_png_accuracy import DATA, idx
from test_image_preprocess import png_gray

LABELS = (reference.FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is missing: apt-get install chromium (scripts/test.sh does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def samples():
    """Test images the model gets right, one per class, with their true labels."""
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")[:500]
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz")[:500]
    pred = reference.run("fashion_mnist", {"input": images.astype(np.float32)[:, None]})["logits"].argmax(1)
    out = {}
    for img, y, p in zip(images, labels, pred):
        if y == p and int(y) not in out:
            out[int(y)] = png_gray(img)
    return out


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context()
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"http://{server.http}/")
    pg.wait_for_selector("body[data-models-loaded=true]", timeout=15000)
    yield pg
    ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def predictions(pg):
    return int(pg.evaluate("document.body.dataset.predictions || '0'"))


def test_page_loads_and_lists_models(page):
    assert page.title().startswith("infera")
    rows = page.locator("#models tr")
    names = {rows.nth(i).locator("td").first.inner_text(): rows.nth(i).locator("td").nth(2).inner_text()
             for i in range(rows.count())}
    assert names["fashion_mnist_image"] == "READY" and names["iris"] == "READY"
    options = page.locator("#model option").all_inner_texts()
    assert "fashion_mnist_image" in options and "iris" not in options and "fashion_preprocess" not in options, options
    assert page.input_value("#model") == "fashion_mnist_image"


def test_uploading_a_test_image_shows_the_right_label(page, samples):
    for cls in (1, 9):  # Trouser, Ankle boot
        before = predictions(page)
        page.set_input_files("#file", files=[{"name": f"{cls}.png", "mimeType": "image/png",
                                              "buffer": samples[cls]}])
        page.wait_for_function(f"Number(document.body.dataset.predictions || 0) > {before}", timeout=15000)
        assert page.inner_text("#label") == LABELS[cls]
        bars = page.locator("#bars .bar")
        assert bars.count() == 5
        assert bars.first.locator(".name").inner_text() == LABELS[cls]
        width = bars.first.locator(".fill").evaluate("e => parseFloat(e.style.width)")
        assert width > 20
        assert "ms" in page.inner_text("#meta")
        assert page.locator("#preview").evaluate("e => e.naturalWidth") == 28
        assert page.inner_text("#error") == ""


def test_dropping_an_rgb_photo_of_another_size(page, samples):
    # A 300x400 RGB JPEG made from the Sandal test image: dropped onto the page.
    img = Image.open(io.BytesIO(samples[5])).convert("RGB").resize((300, 400))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    data = base64.b64encode(buf.getvalue()).decode()
    before = predictions(page)
    page.evaluate("""data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "sandal.jpg", { type: "image/jpeg" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
    }""", data)
    page.wait_for_function(f"Number(document.body.dataset.predictions || 0) > {before}", timeout=15000)
    assert page.inner_text("#label") in LABELS
    assert page.locator("#preview").evaluate("e => e.naturalWidth") == 300


def test_a_bad_file_shows_the_servers_reason(page):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                          "buffer": b"these are not pixels"}])
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=15000)
    assert "supported format" in page.inner_text("#error")
    assert page.inner_text("#label") == "—"
