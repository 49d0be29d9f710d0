"""The studio in a real browser: Playwright driving Debian's chromium (headless, no download).

Edits a table cell (and prints how long its message took to show), sees an invalid edit rejected
with its rule, sees refused actions answered beside their control with the table still there,
submits the plan, watches the job reach done, sees Analysis follow the finished job, and checks
that the page fetched nothing from outside the studio (fonts included). Screenshots of every tab
go to test-artifacts/ui/.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright import sync_api as playwright_api  # requirements-dev.txt; a missing install fails here

from studio.ui.context import E4B_CONFIG_ONLY

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
# Loose on purpose: the goal is 0.5 s (printed below); a shared 2-core CI machine can be far slower.
EDIT_MESSAGE_LIMIT_S = 15.0


@pytest.fixture(scope="module")
def browser_page(studio_app):
    assert Path(CHROMIUM).exists(), f"chromium is not installed at {CHROMIUM} (scripts/install_system_deps.sh installs it)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url, _home = studio_app
    outside: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda request: outside.append(request.url) if _is_outside(request.url, url) else None)
        page.goto(url)
        page.get_by_text("decoder layers").wait_for(timeout=120_000)
        yield page, outside
        browser.close()


def _is_outside(request_url: str, studio_url: str) -> bool:
    parsed = urlparse(request_url)
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.netloc != urlparse(studio_url).netloc


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


def expect(locator):
    return playwright_api.expect(locator)


def assert_table_shown(page) -> None:
    """The table is on screen with its rows, not covered by an error overlay."""
    expect(cell_value(page, 1, 5)).to_be_visible()
    assert page.locator("#plan-table").get_by_text("Error", exact=True).count() == 0


def test_edit_submit_watch_and_plot(browser_page):
    page, outside = browser_page
    page.screenshot(path=str(ARTIFACTS / "1-model.png"), full_page=True)
    page.get_by_role("tab", name="Pruning plan").click()
    page.locator('#plan-table [data-testid="cell-1-5"]').wait_for()
    assert cell_text(page, 1, 5) == "384"  # the demo's default plan: uniform-20 of 512
    expect(page.locator("#plan-kv-legend")).to_contain_text("shared")
    expect(page.locator("#plan-widths-plot .js-plotly-plot .main-svg").first).to_be_visible(timeout=30_000)

    # A width edit is applied and the ratio follows it; how long the message took is printed.
    message = page.locator("#plan-message")
    started = time.perf_counter()
    edit_cell(page, 1, 5, "256")
    expect(message).to_contain_text("Applied: layer 1 width 256", timeout=30_000)
    seconds = time.perf_counter() - started
    print(f"\ncell edit -> message shown in the browser: {seconds * 1000:.0f} ms (goal 500 ms)")
    assert seconds < EDIT_MESSAGE_LIMIT_S
    expect(cell_value(page, 1, 4)).to_have_text("0.5")
    expect(message).to_contain_text("2,944 of 4,096 FFN channels kept")
    expect(page.locator("#plan-preset")).to_contain_text("edited: the table is uniform-20 with changes")

    # An invalid width is rejected, the rule is shown and the cell goes back.
    edit_cell(page, 2, 5, "300")
    expect(message).to_contain_text("Rule: width: a positive multiple of 128", timeout=30_000)
    expect(cell_value(page, 2, 5)).to_have_text("384")
    expect(page.locator("#plan-estimate")).to_contain_text("FFN parameters")

    # Refused actions answer beside their control; the table stays.
    page.get_by_text("Suggest from scores").click()
    page.get_by_role("button", name="Suggest widths").click()
    expect(page.locator("#plan-suggest-message")).to_contain_text("statistics: choose a job with statistics", timeout=30_000)
    assert_table_shown(page)
    page.get_by_label("Save as preset").fill("my plan")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#plan-save-message")).to_contain_text("no spaces", timeout=30_000)
    assert_table_shown(page)
    page.screenshot(path=str(ARTIFACTS / "2-plan-rejected-edit.png"), full_page=True)

    # Submit the edited plan and watch it run.
    page.get_by_role("tab", name="Jobs").click()
    page.locator("#submit-job").click()
    expect(page.locator("#submit-message")).to_contain_text("Submitted job", timeout=60_000)
    job_id = re.search(r"Submitted job (\S+)", page.locator("#submit-message").inner_text()).group(1)
    job_row = page.locator(f'#job-list .job-row[data-job="{job_id}"]')
    page.locator(f'#job-list .job-row[data-job="{job_id}"][data-status="running"]').wait_for(timeout=120_000)
    expect(job_row).to_have_class(re.compile("selected"))  # the new job is selected
    expect(page.get_by_role("button", name="Cancel selected job")).to_be_enabled()
    page.screenshot(path=str(ARTIFACTS / "3-job-running.png"), full_page=True)
    page.locator(f'#job-list .job-row[data-job="{job_id}"][data-status="done"]').wait_for(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-results")).to_contain_text("pruned checkpoint")
    assert page.locator("#job-results a[download]").count() >= 3  # results are downloads, not paths
    for stage in ("calibrate", "statistics", "prune", "quantize", "export"):
        expect(job_row.locator(f'.job-step[data-stage="{stage}"]')).to_contain_text(f"✓ {stage}")
    expect(job_row.locator('.job-step[data-stage="evaluate"]')).to_contain_text("evaluate (not run)")
    expect(page.get_by_role("button", name="Cancel selected job")).to_be_disabled()  # nothing to cancel
    log = page.locator("#job-log textarea")
    expect(log).to_have_value(re.compile("stage prune: done"), timeout=30_000)
    log_text = log.input_value()
    assert "batche " not in log_text and "WARN" not in log_text
    assert len(re.findall(r"stage statistics: layers \d+ of 8", log_text)) == 1  # one updating line per stage
    page.screenshot(path=str(ARTIFACTS / "4-job-done.png"), full_page=True)

    # Analysis follows the job that just finished: selected and drawn without a click.
    page.get_by_role("tab", name="Analysis").click()
    expect(page.locator("#analysis-status")).to_contain_text(job_id, timeout=60_000)
    for plot in ("plot-scores", "plot-widths", "plot-gptq", "plot-sizes"):
        page.locator(f"#{plot} .js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    expect(page.locator("#plot-quality")).to_be_hidden()  # no evaluation: no empty box
    expect(page.locator("#analysis-status")).to_contain_text("not run (the job did not ask for it): perplexity")
    page.screenshot(path=str(ARTIFACTS / "5-analysis.png"), full_page=True)

    # A reload keeps the job: listed from the store, marked as submitted here from browser storage.
    page.reload()
    page.get_by_text("decoder layers").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Jobs").click()
    expect(job_row).to_contain_text("submitted here", timeout=30_000)
    expect(job_row).to_have_class(re.compile("selected"))

    page.get_by_role("tab", name="Analysis").click()
    page.get_by_role("button", name="Refresh list").click()
    page.wait_for_timeout(1000)
    page.locator("#analysis-show").click()
    for plot in ("plot-scores", "plot-widths", "plot-gptq", "plot-sizes"):
        page.locator(f"#{plot} .js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    expect(page.locator("#analysis-status")).to_contain_text(job_id)  # the newest job is preselected
    expect(page.locator("#analysis-status")).to_contain_text("done")

    # A second job, without GPTQ: Analysis follows it too, then compares the two.
    page.get_by_role("tab", name="Jobs").click()
    page.get_by_label("Output name").fill("no-gptq")
    page.get_by_label("GPTQ W4A16 after pruning").uncheck()
    page.locator("#submit-job").click()
    expect(page.locator("#submit-message")).to_contain_text("(no-gptq)", timeout=60_000)
    second = re.search(r"Submitted job (\S+)", page.locator("#submit-message").inner_text()).group(1)
    page.locator(f'#job-list .job-row[data-job="{second}"][data-status="done"]').wait_for(timeout=JOB_TIMEOUT_MS)
    expect(page.locator(f'#job-list .job-row[data-job="{second}"] .job-step[data-stage="quantize"]')).to_contain_text("not run")
    page.get_by_role("tab", name="Analysis").click()
    expect(page.locator("#analysis-status")).to_contain_text(second, timeout=60_000)
    expect(page.locator("#analysis-status")).to_contain_text("not run (the job did not ask for it): gptq, perplexity")
    expect(page.locator("#plot-gptq")).to_be_hidden()
    page.locator("#analysis-compare input").click()  # focusing it refreshes the job list
    page.get_by_role("option", name=re.compile(job_id)).click()
    page.locator("#analysis-show").click()
    page.locator("#plot-compare .js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    expect(page.locator("#plot-compare")).to_contain_text("GPTQ loss per layer")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "5b-analysis-compare.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "6-chat.png"), full_page=True)

    # E4B: the card's figures keep their tildes (not struck through) beside the estimate.
    page.get_by_role("tab", name="Model & data").click()
    source = page.locator("#model-source input")
    source.fill(E4B_CONFIG_ONLY)
    source.press("Enter")
    page.locator("#load-model").click()
    expect(page.locator("#model-summary")).to_contain_text("42 (hidden size 2560)", timeout=60_000)
    page.get_by_role("tab", name="Pruning plan").click()
    estimate = page.locator("#plan-estimate")
    expect(estimate).to_contain_text("~9.9 GB", timeout=60_000)
    assert estimate.locator("del, s").count() == 0
    expect(page.locator("#plan-preset")).to_contain_text("the table holds this preset")
    page.locator("#plan-widths-plot .js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "7-plan-e4b.png"), full_page=True)

    assert outside == [], f"the page fetched from outside the studio: {sorted(set(outside))[:10]}"
