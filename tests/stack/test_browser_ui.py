"""The two UIs an ML lead reads each morning, in a real browser, on the live stack after one scheduled DAG run.

    .venv/bin/python -m pytest tests/stack/test_ui.py        # needs /usr/bin/chromium (`make browser`)

Headless Chromium from Debian driven by Python playwright (no `playwright install`: it would download a browser).
Every test opens a fresh browser profile, as a colleague following a link would, asserts on what the page shows
(never only on status codes) and saves a screenshot in test-artifacts/screenshots/<test>.png, passed or failed.
The `nightly_stack` fixture (tests/stack/conftest.py) brings the stack up and waits for the scheduled run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import playwright.sync_api as playwright_api  # a dev dependency: missing must fail, not skip
import pytest
from mlflow.tracking import MlflowClient

from ops import services
from pipeline.tracking import ui

expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
DAG_ID = "nightly_chat_retrain"
TASKS = ("wait_for_partition", "ingest", "validate", "train", "evaluate", "promote")
WAIT_MS = 30_000  # two shared cores: the first render of a React page can take seconds


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium and fonts-noto-cjk)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh profile (no localStorage: what the UI shows is what the links and the server decide), wide enough
    for every headline column; its screenshot is saved whatever the outcome."""
    context = browser.new_context(viewport={"width": 2400, "height": 1100}, locale="en-US")
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    tab = context.new_page()
    yield tab
    _screenshot(tab, request.node.name)
    context.close()


@pytest.fixture(scope="module")
def tracked(nightly_stack):
    """What the DAG run left in MLflow, read through the client: the UI must show the same."""
    client = MlflowClient(tracking_uri=nightly_stack.mlflow_url)
    run_id = _dag_run_id(nightly_stack)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments],
                              filter_string=f"tags.`airflow.run_id` = '{run_id}' and tags.`pipeline.level` = 'dag_run'")
    assert len(runs) == 1, f"one MLflow parent run for DAG run {run_id}, found {len(runs)}"
    (parent,) = runs
    versions = [v for model in client.search_registered_models()
                for v in client.search_model_versions(f"name = '{model.name}'")]
    (version,) = [v for v in versions if v.tags.get("airflow.run_id") == run_id]
    return {"client": client, "parent": parent, "experiment_id": parent.info.experiment_id, "version": version,
            "model": client.get_registered_model(version.name)}


def test_airflow_dag_page_lists_the_five_tasks_and_the_run_succeeded(page, nightly_stack):
    page.goto(f"{nightly_stack.airflow_url}/dags/{DAG_ID}")
    expect(page.get_by_role("heading", name=DAG_ID).or_(page.get_by_text(DAG_ID).first).first).to_be_visible()
    for task in TASKS:
        expect(page.get_by_text(task, exact=True).first).to_be_visible()

    _screenshot(page, "airflow_dag_page")
    page.goto(f"{nightly_stack.airflow_url}/dags/{DAG_ID}/runs/{quote(_dag_run_id(nightly_stack), safe='')}")
    expect(page.get_by_text(f"{len(TASKS)} Task Instances")).to_be_visible()
    # The run's own state badge and one "Success" per task instance row.
    expect(page.get_by_text("Success", exact=True)).to_have_count(1 + len(TASKS))
    for task in TASKS:
        expect(page.get_by_role("link", name=task, exact=True).or_(page.get_by_text(task, exact=True)).first
               ).to_be_visible()


def test_mlflow_experiment_opens_on_its_training_runs(page, nightly_stack, tracked):
    """MLflow 3.17 lands a fresh browser on the GenAI overview ("Traces", "Detect Issues") unless the link says
    workflowType=machine_learning; the experiment tag alone does not change that (see pipeline/tracking/ui.py)."""
    experiment = tracked["client"].get_experiment(tracked["experiment_id"])
    assert experiment.tags[ui.EXPERIMENT_KIND_TAG] == ui.EXPERIMENT_KIND

    page.goto(ui.experiment_url(nightly_stack.mlflow_url, tracked["experiment_id"]))
    page.wait_for_url(re.compile(rf"#/experiments/{tracked['experiment_id']}/runs"))
    expect(page.get_by_text("matching runs")).to_be_visible()
    expect(page.get_by_role("link", name=tracked["parent"].info.run_name)).to_be_visible()
    expect(page.get_by_text("Detect Issues")).to_have_count(0)
    assert "workflowType=machine_learning" in page.url  # the Model training side of the switch stays selected


@pytest.fixture(scope="module")
def second_night(nightly_stack, tracked):
    """A manual run (a past date: a future one would wait for it) after the scheduled one, run by the scheduler: it scores
    the first night's champion, so its MLflow run has champion/* metrics beside candidate/* and base/*."""
    env = {key: value for key, value in os.environ.items() if key != "AIRFLOW__CORE__UNIT_TEST_MODE"}
    env.update(AIRFLOW_HOME=str(nightly_stack.home / ".airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(Path(__file__).resolve().parents[2] / "dags"))
    run_id = "manual__second_night"
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "trigger", DAG_ID, "--run-id", run_id,
                    "--logical-date", "2026-11-20T00:00:00+00:00"], env=env, check=True, capture_output=True)
    deadline, state = time.monotonic() + 240, None
    while time.monotonic() < deadline and state not in ("success", "failed"):
        time.sleep(3)
        state = services.get_json(f"{nightly_stack.airflow_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
    assert state == "success", f"second night {run_id}: {state}"
    client = tracked["client"]
    (parent,) = client.search_runs([tracked["experiment_id"]], filter_string=(
        f"tags.`airflow.run_id` = '{run_id}' and tags.`pipeline.level` = 'dag_run'"))
    return parent


def test_mlflow_dag_runs_show_candidate_champion_base_metrics_without_column_picking(page, nightly_stack, tracked,
                                                                                      second_night):
    page.goto(ui.runs_url(nightly_stack.mlflow_url, tracked["experiment_id"]))
    expect(page.get_by_text("DAG runs: candidate vs champion vs base").first).to_be_visible()
    expect(page.get_by_text("matching runs")).to_be_visible()
    _close_assistant(page)  # its side panel narrows the grid, which renders only the columns in view
    parent = second_night  # the night that has a champion to compare with
    row = page.locator(f"[role=row][row-id='{parent.info.run_id}']").first
    expect(row).to_be_visible()
    expect(page.locator(f"[role=row][row-id='{tracked['parent'].info.run_id}']").first).to_be_visible()
    # Only DAG (parent) runs are listed, not their stage runs.
    expect(page.get_by_role("link", name=re.compile(r"^(ingest|validate|train|evaluate|promote)$"))).to_have_count(0)

    metrics = parent.data.metrics
    shown = []
    for metric in ui.HEADLINE_METRICS:
        for side in ui.SIDES:
            key = f"{side}/{metric}"
            column = f"metrics.`{key}`"
            expect(page.locator(f"[role=columnheader][col-id='{column}']")).to_contain_text(key)
            cell = page.locator(f"[role=row][row-id='{parent.info.run_id}'] [role=gridcell][col-id='{column}']")
            text = cell.first.inner_text().strip()
            assert float(text) == pytest.approx(metrics[key], rel=1e-3, abs=1e-3), (key, text)
            shown.append(key)
    assert {f"{side}/{m}" for side in ui.SIDES for m in ui.HEADLINE_METRICS} == set(shown)


def test_mlflow_run_renders_the_evaluation_report(page, nightly_stack, tracked):
    parent = tracked["parent"]
    page.goto(f"{nightly_stack.mlflow_url}/#/experiments/{tracked['experiment_id']}/runs/{parent.info.run_id}"
              f"/artifacts/evaluation_report.html?workflowType=machine_learning")
    report = page.frame_locator("iframe").first
    decision = "PROMOTED" if parent.data.tags["promotion.decision"] == "promoted" else "NOT PROMOTED"
    expect(report.get_by_role("heading", name=f"Decision: {decision}", exact=True)).to_be_visible()
    expect(report.get_by_text(parent.data.tags["promotion.reason"]).first).to_be_visible()


def test_mlflow_registered_model_shows_versions_aliases_and_decision(page, nightly_stack, tracked):
    client, version, model = tracked["client"], tracked["version"], tracked["model"]
    assert "champion" in model.description and version.description.startswith("**Decision: ")
    page.goto(ui.model_url(nightly_stack.mlflow_url, model.name))
    expect(page.get_by_text("fine-tuned nightly by the Airflow DAG").first).to_be_visible()  # model description
    for v in client.search_model_versions(f"name = '{model.name}'"):
        expect(page.get_by_role("link", name=f"Version {v.version}", exact=True)).to_be_visible()
    for alias in ("champion", "challenger"):
        holder = client.get_model_version_by_alias(model.name, alias)
        expect(page.get_by_text(f"@ {alias}").first).to_be_visible()
        assert holder.aliases and alias in holder.aliases

    _screenshot(page, "mlflow_registered_model_page")
    page.goto(f"{nightly_stack.mlflow_url}/#/models/{model.name}/versions/{version.version}"
              f"?workflowType=machine_learning")
    verdict = "PROMOTED" if version.tags["promotion.decision"] == "promoted" else "REJECTED"
    expect(page.get_by_text(re.compile(rf"^Decision: {verdict}"))).to_be_visible()
    for check in version.tags["promotion.checks"].splitlines():
        expect(page.get_by_text(check, exact=True).first).to_be_visible()  # in the description and the tags


def _dag_run_id(stack) -> str:
    return getattr(stack, "dag_run_id", None) or stack.run_id


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its "MLflow Assistant" panel in a fresh profile."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
