"""The status API and page, served through the registered HTTP functions, against a seeded state."""

import re
import shutil
import time
from pathlib import Path

import pytest
import requests

import function_app
from emulator import sample_data
from localdev.runner import LocalHost
from shared import workflow
from tests.conftest import API_KEY
from tests.loop import finish

FUNCTION_KEY = "test-function-key-not-a-secret"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def seeded(loop_env, fresh_emulator, monkeypatch):
    """A deployed run and a rejected one, judged with a gate minimum."""
    monkeypatch.setenv("GATE_MIN", "0.55")
    host = LocalHost(function_app.app, {**loop_env, "GATE_MIN": "0.55"}, visibility_timeout=0)
    svc = workflow.get_services()
    svc.storage.ensure_container(svc.settings.training_container)
    made = {}
    for name, noise in (("good.csv", 0.1), ("degraded.csv", 0.45)):
        time.sleep(1.1 if made else 0)  # runs sort by upload time, which storage keeps in whole seconds
        blob = svc.storage.blobs.get_blob_client(svc.settings.training_container, name)
        blob.upload_blob(sample_data.generate(800, seed=4, label_noise=noise).encode(), overwrite=True)
        outcome = workflow.start_run_for_blob(
            svc, svc.storage.blob_ref(svc.settings.training_container, name), source="blob", actor="seed"
        )
        finish(svc, outcome.run_id)
        made[name] = outcome.run_id
    base = host.serve_http(FUNCTION_KEY)
    yield svc, base, made
    host.stop()


def get(base, path, **params):
    return requests.get(f"{base}/api/{path}", params={"code": FUNCTION_KEY, **params}, timeout=10)


def test_the_api_needs_the_function_key(seeded):
    _, base, _ = seeded
    assert requests.get(f"{base}/api/runs", timeout=5).status_code == 401
    assert requests.get(f"{base}/api/runs", params={"code": "wrong"}, timeout=5).status_code == 401
    assert requests.get(f"{base}/api/runs", headers={"x-functions-key": FUNCTION_KEY}, timeout=5).status_code == 200


def test_runs_are_listed_newest_first_paged_and_filtered(seeded):
    _, base, made = seeded
    everything = get(base, "runs").json()
    assert [r["run_id"] for r in everything["runs"]] == [made["degraded.csv"], made["good.csv"]]
    assert everything["next_cursor"] is None
    first = get(base, "runs", limit=1).json()
    second = get(base, "runs", limit=1, cursor=first["next_cursor"]).json()
    assert [first["runs"][0]["run_id"], second["runs"][0]["run_id"]] == [made["degraded.csv"], made["good.csv"]]
    rejected = get(base, "runs", status="Rejected").json()["runs"]
    assert [r["run_id"] for r in rejected] == [made["degraded.csv"]]
    assert rejected[0]["metric"]["name"] == "AUC" and rejected[0]["gate"]["arm"]["approved"] is False


@pytest.mark.parametrize(
    ("params", "parameter", "why"),
    [
        ({"limit": "abc"}, "limit", "'abc' is not a whole number from 1 to 100"),
        ({"limit": "1000"}, "limit", "not a whole number from 1 to 100"),
        ({"limit": "²"}, "limit", "not a whole number"),
        ({"cursor": "A" * 20_000}, "cursor", "not a cursor this API issued (20000 characters)"),
        ({"cursor": "!!not-a-cursor"}, "cursor", "not a cursor this API issued"),
        # well-formed base64 JSON, but not a continuation token of ours: other keys, other values
        ({"cursor": "eyJ4IjogIjEifQ"}, "cursor", "not a cursor this API issued"),
        ({"cursor": "eyJQYXJ0aXRpb25LZXkiOiAiJyBvciAxIGVxIDEifQ"}, "cursor", "not a cursor this API issued"),
        ({"status": "Sideways"}, "status", "unknown status 'Sideways'"),
    ],
)
def test_a_bad_query_parameter_is_a_400_naming_it(seeded, params, parameter, why):
    _, base, _ = seeded
    response = get(base, "runs", **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["parameter"]) == ("BadParameter", parameter)
    assert error["message"].startswith(f"parameter {parameter}: ") and why in error["message"]


def test_the_page_and_the_api_send_no_referrer_and_are_not_cached(seeded):
    _, base, _ = seeded
    for path in ("status", "runs", "targets"):
        headers = get(base, path).headers
        assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
    page = get(base, "status")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert '<meta name="referrer" content="no-referrer">' in page.text


def test_names_that_could_reorder_or_forge_text_are_shown_escaped(seeded):
    svc, base, _ = seeded
    # GIVEN a blob whose name holds a right-to-left override (it would show as "invoicecsv.exe"-like
    # tricks) and a zero-width space
    name = "invoice\u202egpj.csv\u200b.csv"
    svc.storage.blobs.get_blob_client(svc.settings.training_container, name).upload_blob(b"a,label\n1,0\n")
    workflow.start_run_for_blob(
        svc, svc.storage.blob_ref(svc.settings.training_container, name), source="blob", actor="seed"
    )
    page = get(base, "status").text
    # THEN the page shows the characters' codes, never the characters
    assert "invoice\\u202egpj.csv\\u200b.csv" in page
    assert "\u202e" not in page and "\u200b" not in page
    # AND the API keeps the name exact (JSON escapes it)
    run = next(r for r in get(base, "runs").json()["runs"] if r["blob"].startswith("invoice"))
    assert run["blob"] == name


def test_one_run_has_its_history_gate_decision_and_deploy_results(seeded):
    _, base, made = seeded
    run = get(base, f"runs/{made['good.csv']}").json()
    assert run["status"] == "Deployed"
    assert [h["to"] for h in run["history"] if "to" in h][-1] == "Deployed"
    assert run["gate"]["classic"]["approved"] and run["targets"]["arm"]["status"] == "Deployed"
    assert run["metrics"]["AUC"] == run["metric"]["value"]
    assert get(base, "runs/20991231T000000Z-0000000000000000").status_code == 404
    assert get(base, "runs/not-a-run").status_code == 404


def test_targets_show_what_is_live_and_nothing_secret(seeded):
    _, base, made = seeded
    response = get(base, "targets")
    targets = {t["name"]: t for t in response.json()["targets"]}
    assert targets["classic"]["live_run"] == targets["arm"]["live_run"] == made["good.csv"]
    assert targets["classic"]["since"] and targets["arm"]["kind"] == "arm"
    assert API_KEY not in response.text and "api_key" not in response.text


def test_the_page_is_self_contained_and_marks_deploys_and_rejections(seeded):
    _, base, made = seeded
    response = get(base, "status")
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert made["good.csv"] in page and made["degraded.csv"] in page
    assert re.findall(r"""(?:src|href)=["']?https?://""", page) == []  # nothing from a CDN
    assert page.count("class=deployed") == 1 and page.count("class=rejected") == 1
    assert API_KEY not in page
    link = re.search(r'<a href="(status/runs/[^"]+)"', page).group(1).replace("&amp;", "&")
    assert requests.get(f"{base}/api/{link}", timeout=5).status_code == 200  # links keep the key
    # the chart: a time axis, the gate's minimum, and a legend in the badges' colours
    assert page.count("class=tick") >= 4 and "id=gate-min" in page and "min 0.55" in page
    assert "class=legend" in page and "gate minimum" in page
    assert "stroke='#9a6700'" in page and ".warn { background: #9a6700; }" in page  # rejected: amber, both


def test_a_run_has_a_readable_page_with_its_json_one_click_away(seeded):
    _, base, made = seeded
    good = made["good.csv"]
    response = requests.get(f"{base}/api/status/runs/{good}", params={"code": FUNCTION_KEY}, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert f"<span class=mono>{good}</span> <span class='badge ok'>Deployed</span>" in page
    history = re.search(r"<table id=history>(.*?)</table>", page, re.S).group(1)
    assert [m for m in ("Requested", "Submitted", "Running", "Approved", "Deploying", "Deployed") if m in history]
    assert history.count("<tr>") == len(get(base, f"runs/{good}").json()["history"]) + 1
    deploys = re.search(r"<table id=deploys>(.*?)</table>", page, re.S).group(1)
    assert "arm" in deploys and "classic" in deploys and deploys.count("Deployed") == 2
    assert "AUC <span class=muted>(gate)</span>" in page and "id=gate" in page
    assert API_KEY not in page and re.findall(r"""(?:src|href)=["']?https?://""", page) == []
    json_link = re.search(r'<a id=json href="([^"]+)"', page).group(1).replace("&amp;", "&")
    resolved = requests.get(f"{base}/api/status/runs/{json_link}", timeout=10)  # relative to the run page
    assert resolved.json()["run_id"] == good
    rejected = requests.get(f"{base}/api/status/runs/{made['degraded.csv']}", params={"code": FUNCTION_KEY}, timeout=10)
    assert "<span class='badge warn'>Rejected</span>" in rejected.text
    missing = requests.get(f"{base}/api/status/runs/20991231T000000Z-0000000000000000", params={"code": FUNCTION_KEY})
    assert missing.status_code == 404


@pytest.mark.skipif(
    not shutil.which("chromedriver") or not shutil.which("chromium"),
    reason="Debian's chromium and chromium-driver are not installed (./dev.sh installs them as root)",
)
def test_the_page_in_a_real_headless_chromium(seeded):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    _, base, made = seeded
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,1100",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{base}/api/status?code={FUNCTION_KEY}")
        assert driver.title.startswith("Retraining autopilot")
        live = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#targets tr")[1:]]
        assert all(made["good.csv"] in row for row in live) and len(live) == 2
        chart = driver.find_element(By.ID, "chart")
        assert chart.find_elements(By.CSS_SELECTOR, "circle.deployed")
        assert chart.find_elements(By.CSS_SELECTOR, "path.rejected")
        assert chart.size["width"] > 600
        recent = driver.find_element(By.ID, "recent").text
        assert "Rejected" in recent and "Deployed" in recent
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "status-page.png"
        assert driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
        assert chart.find_elements(By.CSS_SELECTOR, "text.tick") and chart.find_elements(By.ID, "gate-min")
        driver.find_element(By.LINK_TEXT, made["good.csv"]).click()
        assert driver.title == f"Retraining autopilot — run {made['good.csv']}"
        rows = driver.find_elements(By.CSS_SELECTOR, "#history tr")[1:]
        assert len(rows) >= 6 and "Deployed" in rows[-1].text
        run_page = ARTIFACTS / "run-page.png"
        assert driver.save_screenshot(str(run_page)) and run_page.stat().st_size > 10_000
        driver.find_element(By.ID, "json").click()
        assert made["good.csv"] in driver.find_element(By.TAG_NAME, "body").text
        print(f"screenshots: {path}, {run_page}")
    finally:
        driver.quit()
