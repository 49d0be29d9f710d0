"""The studio in a real browser: Playwright driving Debian's chromium (headless, no download).

Edits a table cell, sees an invalid edit rejected with its rule, submits the plan, watches the job
reach done and the analysis plots render. Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
JOB_TIMEOUT_MS = 600_000


@pytest.fixture(scope="module")
def page(studio_app):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/install_system_deps.sh installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url, _home = studio_app
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("decoder layers").wait_for(timeout=120_000)
        yield page
        browser.close()


def edit_cell(page, row: int, column: int, value: str) -> None:
    cell = page.locator(f'#plan-table [data-testid="cell-{row}-{column}"]')
    cell.dblclick()
    editor = cell.locator("textarea")
    editor.fill(value)
    editor.press("Enter")


def cell_value(page, row: int, column: int):
    """The displayed value of a cell (without the cell's menu buttons)."""
    return page.locator(f'#plan-table [data-testid="cell-{row}-{column}"] span[data-editable]')


def cell_text(page, row: int, column: int) -> str:
    return cell_value(page, row, column).inner_text().strip()


def test_edit_submit_watch_and_plot(page):
    page.screenshot(path=str(ARTIFACTS / "1-model.png"), full_page=True)
    page.get_by_role("tab", name="Pruning plan").click()
    page.locator('#plan-table [data-testid="cell-1-5"]').wait_for()
    assert cell_text(page, 1, 5) == "384"  # the demo's default plan: uniform-20 of 512

    # A width edit is applied and the ratio follows it.
    edit_cell(page, 1, 5, "256")
    message = page.locator("#plan-message")
    playwright_api.expect(message).to_contain_text("Applied: layer 1 width 256", timeout=30_000)
    playwright_api.expect(cell_value(page, 1, 4)).to_have_text("0.5")
    playwright_api.expect(message).to_contain_text("2,944 of 4,096 FFN channels kept")

    # An invalid width is rejected, the rule is shown and the cell goes back.
    edit_cell(page, 2, 5, "300")
    playwright_api.expect(message).to_contain_text("Rule: width: a positive multiple of 128", timeout=30_000)
    playwright_api.expect(cell_value(page, 2, 5)).to_have_text("384")
    playwright_api.expect(page.locator("#plan-estimate")).to_contain_text("FFN parameters")
    page.screenshot(path=str(ARTIFACTS / "2-plan-rejected-edit.png"), full_page=True)

    # Submit the edited plan and watch it run.
    page.get_by_role("tab", name="Jobs").click()
    page.locator("#submit-job").click()
    playwright_api.expect(page.locator("#submit-message")).to_contain_text("Submitted job", timeout=60_000)
    job_id = re.search(r"Submitted job (\S+)", page.locator("#submit-message").inner_text()).group(1)
    job_row = page.locator(f'#job-list .job-row[data-job="{job_id}"]')
    page.locator(f'#job-list .job-row[data-job="{job_id}"][data-status="running"]').wait_for(timeout=120_000)
    playwright_api.expect(job_row).to_have_class(re.compile("selected"))  # the new job is selected
    page.screenshot(path=str(ARTIFACTS / "3-job-running.png"), full_page=True)
    page.locator(f'#job-list .job-row[data-job="{job_id}"][data-status="done"]').wait_for(timeout=JOB_TIMEOUT_MS)
    playwright_api.expect(page.locator("#job-results")).to_contain_text("pruned checkpoint")
    page.screenshot(path=str(ARTIFACTS / "4-job-done.png"), full_page=True)

    # A reload keeps the job: listed from the store, marked as submitted here from browser storage.
    page.reload()
    page.get_by_text("decoder layers").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Jobs").click()
    playwright_api.expect(job_row).to_contain_text("submitted here", timeout=30_000)
    playwright_api.expect(job_row).to_have_class(re.compile("selected"))

    # Analysis: the job's plots render (Plotly draws SVG into .js-plotly-plot).
    page.get_by_role("tab", name="Analysis").click()
    page.get_by_role("button", name="Refresh list").click()
    page.wait_for_timeout(1000)
    page.locator("#analysis-show").click()
    for plot in ("plot-scores", "plot-widths", "plot-gptq", "plot-sizes"):
        page.locator(f"#{plot} .js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    playwright_api.expect(page.locator("#analysis-status")).to_contain_text(job_id)  # the newest job is preselected
    playwright_api.expect(page.locator("#analysis-status")).to_contain_text("done")
    page.screenshot(path=str(ARTIFACTS / "5-analysis.png"), full_page=True)
