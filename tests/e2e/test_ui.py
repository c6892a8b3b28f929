"""The dashboard at /ui in headless Chromium, against a real API and a real worker.

Without a Chromium binary these tests skip, except in CI (CI=true), where a missing browser fails them.
With RLPRUNE_UI_SCREENSHOTS=1 the jobs page and a finished job's page are saved to docs/.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ..support.browser import Browser, find_chromium
from ..support.databases import fresh_redis
from ..support.jobs import all_events, finished, wait_for
from ..support.paths import REPO
from ..support.serving import served_api
from ..support.specs import tiny_spec
from ..support.uploads import image_folder, zipped

pytestmark = pytest.mark.slow

SCREENSHOTS = os.environ.get("RLPRUNE_UI_SCREENSHOTS", "") not in ("", "0")
ORANGE, GREEN = (234, 88, 12), (22, 163, 74)  # the loss and best-so-far strokes of charts.js


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "no Chromium binary (apt-get install chromium, or set RLPRUNE_TEST_CHROMIUM)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def service(chromium, tmp_path_factory):
    """API + one worker on a SQLite store; yields (base URL, key, client with that key)."""
    settings = {"RLPRUNE_BROKER_URL": fresh_redis(7), "RLPRUNE_LEASE_SECONDS": "4", "RLPRUNE_HEARTBEAT_SECONDS": "1",
                "RLPRUNE_PROGRESS_INTERVAL_SECONDS": "0.2", "RLPRUNE_WEBHOOK_ALLOW_PRIVATE": "true"}
    with served_api("sqlite", tmp_path_factory.mktemp("ui"), worker=True, **settings) as (base, _, keys):
        headers = {"Authorization": f"Bearer {keys['alice']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            yield base, keys["alice"], client


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(chromium, downloads):
    opened = Browser(chromium, downloads)
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def _no_page_errors(request):
    """Every test ends without an uncaught exception or console error (a CSP violation is one)."""
    if "browser" not in request.fixturenames:
        yield
        return
    page = request.getfixturevalue("browser")
    page.errors.clear()
    yield
    assert page.errors == []


STATE: dict[str, str] = {}  # the succeeded job's id, shared by the tests that follow its submission


def sign_in(browser: Browser, base: str, key: str, path: str = "/ui") -> None:
    browser.goto(f"{base}{path}#key={key}")
    browser.wait("!document.querySelector('#sign-in') && !!document.querySelector('main .card')")


def colour_pixels(browser: Browser, selector: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of the chart's canvas within a small distance of a series' stroke colour."""
    return browser.js(f"""(() => {{
        const c = document.querySelector({json.dumps(selector + ' canvas')});
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        const [r, g, b] = {json.dumps(list(rgb))};
        for (let i = 0; i < d.length; i += 4)
          if (d[i + 3] > 200 && Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 40) n++;
        return n; }})()""")


def test_ui_is_public_and_locked_down(service):
    base, _, _ = service
    assert httpx.get(f"{base}/").headers["location"] == "/ui"
    for path in ("/ui", "/ui/submit", "/ui/jobs/anything"):
        response = httpx.get(f"{base}{path}")
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "digits" in httpx.get(f"{base}/ui/examples").json()["items"]
    assert httpx.get(f"{base}/ui/examples/digits").json()["name"] == "digits-vgg11"
    assert httpx.get(f"{base}/ui/examples/..%2Fpyproject").status_code == 404
    assert httpx.get(f"{base}/ui/static/js/app.js").headers["content-security-policy"]
    assert httpx.get(f"{base}/jobs").status_code == 401  # the API itself still needs a key


def test_the_api_docs_render_without_internet(browser, service):
    """Swagger UI and ReDoc load their scripts from the API itself (the browser resolves no other host)."""
    base, _, _ = service
    operations = sum(len(methods) for methods in httpx.get(f"{base}/openapi.json").json()["paths"].values())
    browser.goto(f"{base}/docs")
    assert browser.wait(f"document.querySelectorAll('.opblock').length >= {operations}")
    browser.goto(f"{base}/redoc")
    assert browser.wait("document.querySelectorAll('[data-section-id^=\"operation/\"]').length > 0")


def test_sign_in_with_the_key_fragment_and_sign_out(browser, service):
    base, key, _ = service
    browser.goto(f"{base}/ui")
    browser.js("sessionStorage.clear()")
    browser.goto(f"{base}/ui/submit")
    browser.wait("!!document.querySelector('#sign-in')")

    sign_in(browser, base, key)
    assert browser.wait("!!document.querySelector('#jobs')")
    assert browser.js("location.href") == f"{base}/ui"  # the key left the address bar
    assert browser.js("history.length") >= 1 and "key=" not in browser.js("location.href")
    assert browser.js("sessionStorage.getItem('rlprune.key')") == key

    browser.click("#sign-out")
    browser.wait("!!document.querySelector('#sign-in')")
    assert browser.js("sessionStorage.getItem('rlprune.key')") is None

    browser.set_value("#key", "rlp_not-a-key")
    browser.js("document.querySelector('#sign-in').requestSubmit()")
    browser.wait("document.querySelector('#sign-in-error').textContent.includes('not accepted')")
    browser.set_value("#key", key)
    browser.js("document.querySelector('#sign-in').requestSubmit()")
    browser.wait("!!document.querySelector('#jobs')")

    browser.js("sessionStorage.setItem('rlprune.key', 'rlp_revoked')")  # a key the API stops accepting
    browser.goto(f"{base}/ui")
    browser.wait("document.querySelector('#sign-in-error')?.textContent.includes('Sign in again')")
    sign_in(browser, base, key)


def test_submit_shows_field_errors_then_follows_the_job_live(browser, service, tmp_path):
    base, key, client = service
    sign_in(browser, base, key, "/ui/submit")
    browser.wait("document.querySelectorAll('#example option').length > 1")
    browser.set_value("#example", "digits")
    browser.wait("document.querySelector('#spec').value.includes('digits-vgg11')")

    browser.set_value("#spec", "model: {arch: vgg11}\nprune:\n  budget: {keep: 3}\n")
    browser.click("#submit-job")
    error = browser.wait("document.querySelector('#spec-errors li[data-field=\"prune.budget.keep\"]')?.textContent")
    assert "prune.budget.keep" in error and "less than or equal to 1" in error
    assert browser.js("location.pathname") == "/ui/submit"

    spec = tiny_spec(pretrain={"epochs": 4}, baselines=["l1"], finetune={"distillation": {"weight": 0.5}},
                     prune={"agent": "reinforce", "steps": 6, "samples_per_step": 4, "eval_samples": 64})
    browser.set_value("#spec", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    browser.click("#submit-job")
    job_id = browser.wait("location.pathname.startsWith('/ui/jobs/') && location.pathname.slice(9)")
    first = browser.wait("document.querySelector('#job-status .badge')?.dataset.status")
    assert first in ("queued", "running")  # the page opened before the job finished, and then followed it
    wait_status(browser, client, job_id, "succeeded", timeout=240)
    STATE["job"] = job_id

    # The report's parts, drawn once the job succeeded.
    report = client.get(f"/jobs/{job_id}/report").json()
    browser.wait("document.querySelectorAll('#layers svg rect.after').length > 0")
    assert browser.js("document.querySelectorAll('#layers svg rect.after').length") == len(report["layers"])
    assert browser.js("document.querySelectorAll('#comparison tbody tr').length") == 5
    assert browser.js("[...document.querySelectorAll('#baseline-table tr')].map(r => r.dataset.baseline)")[-1] == "l1"
    # the finalist stage: every finalist, and which was returned and why
    assert browser.js("[...document.querySelectorAll('#finalist-table tbody tr')].map(r => r.dataset.finalist)") == [
        f["name"] for f in report["finalists"]["finalists"]]
    assert report["finalists"]["winner"] in browser.js("document.querySelector('#finalists-reason').textContent")
    assert browser.js("[...document.querySelectorAll('#timeline li[data-stage]')]"
                      ".every(li => li.dataset.state === 'done')")
    # what the figures mean: the pruned accuracy both ways, the reward's definition, axis titles, legends
    reestimated = browser.js("document.querySelector('#bn-reestimated').textContent")
    assert f"{100 * report['pruned']['accuracy_bn_reestimated']:.2f} %" in reestimated
    assert "Reward:" in browser.js("document.querySelector('#reward-definition').textContent")
    assert browser.js("document.querySelector('#chart-pretrain').getAttribute('aria-label')") == (
        "training loss and validation accuracy by epoch")  # the axis titles, drawn on the canvas
    legend = browser.js("[...document.querySelectorAll('#chart-pretrain .u-legend .u-series:not(:first-child) "
                        ".u-value')].map(e => e.textContent)")
    assert legend and "\N{EN DASH}" not in legend, legend  # the latest values, with no cursor on the chart
    # a distilled finetune: the page says so, and its chart shows the loss's two parts
    assert "Distilled from the unpruned model" in browser.js("document.querySelector('#distillation-info').textContent")
    finetune_series = browser.js("[...document.querySelectorAll('#chart-finetune .u-legend .u-label')]"
                                 ".map(e => e.textContent)")
    assert {"label loss", "distillation loss"} <= set(finetune_series), finetune_series

    # Curves: one point per epoch or search step, and the lines really drawn on the canvas.
    points = "Number(document.querySelector('#chart-{}').dataset.points)"
    assert browser.js(points.format("pretrain")) == 4 and browser.js(points.format("finetune")) == 1
    assert browser.js(points.format("search")) == len(report["search"]["curve_steps"])
    assert colour_pixels(browser, "#chart-pretrain", ORANGE) > 20
    assert colour_pixels(browser, "#chart-search", GREEN) > 20

    # the spec as the service holds it, and "Clone and edit" carries it into Submit
    held = client.get(f"/jobs/{job_id}").json()["spec"]
    assert yaml.safe_load(browser.js("document.querySelector('#job-spec').textContent")) == held
    events = all_events(client, job_id)
    browser.wait(f"document.querySelectorAll('#events tbody tr').length === {len(events)}")
    assert browser.js("document.querySelector('#events tbody tr').dataset.type") == "succeeded"
    browser.wait("document.querySelectorAll('#artifact-list tbody tr').length > 0")
    if SCREENSHOTS:
        browser.screenshot(REPO / "docs" / "dashboard-job.png")


def test_artifact_download_arrives_intact(browser, service, downloads):
    base, key, client = service
    job_id = STATE.get("job") or pytest.skip("needs the job of the submit test")
    sign_in(browser, base, key, f"/ui/jobs/{job_id}")
    browser.wait("!!document.querySelector('button[data-artifact=\"model.safetensors\"]')")
    browser.click("button[data-artifact=\"model.safetensors\"]")
    target = downloads / "model.safetensors"
    deadline = time.monotonic() + 20
    while not target.exists() or any(downloads.glob("*.crdownload")):
        assert time.monotonic() < deadline, "the download did not arrive"
        time.sleep(0.1)
    listed = {a["name"]: a for a in client.get(f"/jobs/{job_id}/artifacts").json()}
    assert hashlib.sha256(target.read_bytes()).hexdigest() == listed["model.safetensors"]["sha256"]


def wait_status(browser: Browser, client: httpx.Client, job_id: str, status: str, timeout: float = 20) -> None:
    """Wait for the page's status badge; on a timeout, say what the API and the page said."""
    try:
        browser.wait(f"document.querySelector('#job-status .badge')?.dataset.status === {json.dumps(status)}", timeout)
    except AssertionError as error:
        api = client.get(f"/jobs/{job_id}").json()
        page = browser.js("document.querySelector('main').innerText.slice(0, 600)")
        raise AssertionError(f"page never showed {status}; API: {api['status']} {api['error']}; page: {page}; "
                             f"errors: {browser.errors}") from error


def confirm(browser: Browser, button: str) -> None:
    browser.click(button)
    browser.wait("!!document.querySelector('dialog.confirm[open]')")
    browser.click("dialog.confirm[open] button[data-answer='yes']")


def test_clone_and_edit_carries_a_job_s_spec_into_submit(browser, service):
    base, key, client = service
    job_id = STATE.get("job") or pytest.skip("needs the job of the submit test")
    sign_in(browser, base, key, f"/ui/jobs/{job_id}")
    browser.wait("document.querySelector('#job-spec')?.textContent.includes('model:')")
    browser.click("#clone-job")
    browser.wait("location.pathname === '/ui/submit' && document.querySelector('#spec')?.value.includes('model:')")
    assert yaml.safe_load(browser.js("document.querySelector('#spec').value")) == client.get(
        f"/jobs/{job_id}").json()["spec"]


def test_cancel_a_running_and_a_queued_job(browser, service):
    base, key, client = service
    long = tiny_spec(name="long", pretrain={"epochs": 200}).model_dump(mode="json")
    running = client.post("/jobs", json=long).json()
    queued = client.post("/jobs", json={**long, "name": "waiting"}).json()  # one worker: this one waits
    wait_for(client, running["id"], lambda j: j["status"] == "running", timeout=60)

    sign_in(browser, base, key, f"/ui/jobs/{queued['id']}")
    wait_status(browser, client, queued["id"], "queued")
    confirm(browser, "#cancel-job")
    wait_status(browser, client, queued["id"], "cancelled", timeout=30)

    browser.goto(f"{base}/ui/jobs/{running['id']}")
    wait_status(browser, client, running["id"], "running")
    browser.click("#cancel-job")
    browser.click("dialog.confirm[open] button[data-answer='no']")  # changing one's mind leaves the job alone
    assert client.get(f"/jobs/{running['id']}").json()["status"] == "running"
    confirm(browser, "#cancel-job")
    wait_status(browser, client, running["id"], "cancelled", timeout=60)
    assert wait_for(client, running["id"], finished)["status"] == "cancelled"
    assert browser.js("document.querySelector('#timeline li[data-stage=end]').dataset.state") == "cancelled"
    STATE["cancelled"] = queued["id"]


def test_two_jobs_compared_side_by_side(browser, service):
    base, key, client = service
    done, other = STATE.get("job"), STATE.get("cancelled")
    if not (done and other):
        pytest.skip("needs the jobs of the submit and cancel tests")
    sign_in(browser, base, key, "/ui")
    for job_id in (done, other):
        browser.wait(f"!!document.querySelector('input[data-compare=\"{job_id}\"]')")
        browser.click(f"input[data-compare=\"{job_id}\"]")
    browser.wait("!document.querySelector('#compare-jobs').disabled")
    browser.click("#compare-jobs")
    heads = "[...document.querySelectorAll('#compare-table th[data-job-id]')].map(t => t.dataset.jobId)"
    assert sorted(browser.wait(f"{heads}.length === 2 && {heads}")) == sorted([done, other])
    layers = client.get(f"/jobs/{done}/report").json()["layers"]
    column = browser.js(f"{heads}.indexOf({json.dumps(done)})")
    cells = browser.js("[...document.querySelectorAll('#compare-table tr[data-row=\"channels per layer\"] td')]"
                       ".map(td => td.textContent)")
    assert cells[column] == " ".join(str(layer["channels_after"]) for layer in layers)
    if SCREENSHOTS:
        browser.screenshot(REPO / "docs" / "dashboard-compare.png", full_page=False)


def test_a_dataset_uploaded_from_the_dashboard_is_listed_and_deleted(browser, service, tmp_path):
    base, key, client = service
    archive = tmp_path / "pets.zip"
    archive.write_bytes(zipped(image_folder()))
    sign_in(browser, base, key, "/ui/data")
    browser.set_files("#datasets-file", [archive])
    browser.click("#datasets-upload")
    message = browser.wait("document.querySelector('#datasets-message').textContent.startsWith('Uploaded') && "
                           "document.querySelector('#datasets-message').textContent")
    [listed] = client.get("/datasets").json()
    assert message.endswith(f"upload:{listed['id']}") and listed["classes"] == ["cat", "dog"]
    browser.wait(f"!!document.querySelector('#datasets tr[data-id=\"{listed['id']}\"]')")
    browser.set_files("#datasets-file", [REPO / "README.md"])
    browser.click("#datasets-upload")
    assert "not a zip" in browser.wait("document.querySelector('#datasets-message').textContent.includes('Not')"
                                       " && document.querySelector('#datasets-message').textContent")
    # the Submit page's picker writes it into the spec, and a job runs on it from there
    browser.goto(f"{base}/ui/submit")
    browser.wait(f"!!document.querySelector('#dataset-picker option[value=\"{listed['id']}\"]')")
    spec = tiny_spec(name="on-my-pets", pretrain={"epochs": 1}).model_dump(mode="json", exclude={"dataset"})
    browser.set_value("#spec", yaml.safe_dump(spec, sort_keys=False))
    browser.set_value("#dataset-picker", listed["id"])
    picked = yaml.safe_load(browser.js("document.querySelector('#spec').value"))
    assert picked == {**spec, "dataset": {"name": "imagefolder", "root": f"upload:{listed['id']}"}}
    browser.click("#submit-job")
    job_id = browser.wait("location.pathname.startsWith('/ui/jobs/') && location.pathname.slice(9)")
    wait_status(browser, client, job_id, "succeeded", timeout=240)
    STATE["picked"] = job_id
    shown = yaml.safe_load(browser.js("document.querySelector('#job-spec').textContent"))
    assert shown["dataset"]["root"] == f"upload:{listed['id']}" and shown["name"] == "on-my-pets"
    browser.goto(f"{base}/ui/data")
    browser.wait(f"!!document.querySelector('#datasets tr[data-id=\"{listed['id']}\"]')")
    confirm(browser, f"#datasets tr[data-id=\"{listed['id']}\"] button")
    browser.wait("document.querySelector('#datasets tbody').textContent.includes('No datasets')")
    assert client.get("/datasets").json() == []


def test_a_webhook_added_from_the_dashboard_shows_its_secret_once_and_takes_a_test_event(browser, service):
    base, key, client = service
    sign_in(browser, base, key, "/ui/webhooks")
    browser.set_value("#webhook-url", "http://127.0.0.1:9/hook")
    browser.click("#webhook-add")
    secret = browser.wait("document.querySelector('#webhook-secret')?.textContent")
    [hook] = client.get("/webhooks").json()
    assert secret.startswith("whsec_") and hook["url"] == "http://127.0.0.1:9/hook"
    row = f"[data-webhook=\"{hook['id']}\"]"
    browser.wait(f"!!document.querySelector('{row}')")
    browser.click(f"{row} button[data-action=test]")
    queued = browser.wait("document.querySelector('#webhook-message').textContent.match(/Test event (msg_\\w+)/)?.[1]")
    # Nothing listens at :9: the embedded worker's first attempt fails, and the page shows it as it refreshes.
    browser.wait(f"document.querySelector('{row} tbody')?.textContent.includes('webhook.test')", timeout=30)
    assert [d["event"] for d in client.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]][:1] == [
        "webhook.test"] and queued.startswith("msg_")
    confirm(browser, f"{row} button[data-action=remove]")
    browser.wait("document.querySelector('#webhook-list').textContent.includes('No webhooks')")
    assert client.get("/webhooks").json() == []


def test_jobs_page_filters_pages_and_deletes(browser, service):
    base, key, client = service
    sign_in(browser, base, key, "/ui?limit=1")
    rows = "[...document.querySelectorAll('#jobs tbody tr[data-job-id]')].map(r => r.dataset.jobId)"
    first = browser.wait(rows)
    assert len(first) == 1
    browser.click("#next-page")
    second = browser.wait(f"(() => {{ const r = {rows}; return r.length && r[0] !== {json.dumps(first[0])} && r; }})()")
    browser.click("#prev-page")
    browser.wait(f"{rows}[0] === {json.dumps(first[0])}")

    if STATE.get("job"):
        browser.set_value("#status-filter", "succeeded")
        newest = STATE.get("picked") or STATE["job"]  # one per page: the dataset picker's job came last
        browser.wait(f"JSON.stringify({rows}) === {json.dumps(json.dumps([newest]).replace(' ', ''))}")
        assert "status=succeeded" in browser.js("location.search")
        if SCREENSHOTS:
            browser.goto(f"{base}/ui")
            browser.wait(f"{rows}.length >= 3")
            browser.screenshot(REPO / "docs" / "dashboard-jobs.png", full_page=False)
    assert second

    doomed = STATE.get("cancelled") or pytest.skip("needs the cancelled job of the cancel test")
    # search by a part of the name (the API's filter, kept in the address), then sort the page by a column
    browser.goto(f"{base}/ui")
    browser.wait(f"{rows}.length >= 3")
    browser.set_value("#job-search", "WAIT")
    browser.wait(f"JSON.stringify({rows}) === {json.dumps(json.dumps([doomed]).replace(' ', ''))}")
    assert "name=WAIT" in browser.js("location.search")
    browser.set_value("#job-search", "")
    browser.wait(f"{rows}.length >= 3")
    names = ("[...document.querySelectorAll('#jobs tbody tr[data-job-id] td.name a')]"
             ".map(a => a.textContent.toLowerCase())")
    browser.click("th[data-sort=name]")
    ascending = browser.wait(f"(() => {{ const n = {names}; return n.join() === [...n].sort().join() && n; }})()")
    browser.click("th[data-sort=name]")
    browser.wait(f"{names}.join() === {json.dumps(','.join(sorted(ascending, reverse=True)))}")

    browser.goto(f"{base}/ui/jobs/{doomed}")
    browser.wait("!document.querySelector('#delete-job')?.hidden")
    confirm(browser, "#delete-job")
    browser.wait("location.pathname === '/ui' && !!document.querySelector('#jobs')")
    assert client.get(f"/jobs/{doomed}").status_code == 404
