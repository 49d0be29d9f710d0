"""What the Jobs tab shows of a job: its log as a reader wants it, and every stage's mark."""

from __future__ import annotations

from studio.calibration import OFFLINE_CALIBRATION_TEXT
from studio.jobs.spec import parse_spec
from studio.ui.jobs_tab import job_row_html, readable_log, stage_marks

LOG = """2026-12-01 08:09:39 worker worker vm:16920 runs the job (attempt 1)
W1201 08:09:46.279000 17079 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass
2026-12-01 08:09:46,862 INFO stage calibrate: starting
2026-12-01 08:09:48,957 INFO stage statistics: layers 1 of 8
2026-12-01 08:09:49,060 INFO stage statistics: layers 2 of 8
2026-12-01 08:09:49,061 WARNING something the user cannot act on
2026-12-01 08:09:49,279 INFO stage statistics: layers 8 of 8
WARN  Calibration dataset size should be more than 256. Current: 4.
INFO  | Pre-quan... | 3     | 0.019  | 0.038 | 0.115   | 52.8%  | model.lan... |

2026-12-01 08:09:52,769 INFO stage evaluate: batches 1 of 64\r2026-12-01 08:09:52,770 INFO stage evaluate: batches 2 of 64
2026-12-01 08:09:53,000 ERROR stage evaluate failed:
Traceback (most recent call last):
  File "stages.py", line 1, in run
RuntimeError: boom
2026-12-01 08:09:53,100 ERROR stage evaluate: RuntimeError: boom""".split("\n")


def test_the_log_keeps_the_studios_lines_one_progress_line_per_stage_and_tracebacks():
    assert readable_log(LOG) == [
        "2026-12-01 08:09:39 worker worker vm:16920 runs the job (attempt 1)",
        "2026-12-01 08:09:46,862 INFO stage calibrate: starting",
        "2026-12-01 08:09:49,279 INFO stage statistics: layers 8 of 8",  # updated in place
        "2026-12-01 08:09:52,770 INFO stage evaluate: batches 2 of 64",  # the last redraw of the line
        "2026-12-01 08:09:53,000 ERROR stage evaluate failed:",
        "Traceback (most recent call last):",
        '  File "stages.py", line 1, in run',
        "RuntimeError: boom",
        "2026-12-01 08:09:53,100 ERROR stage evaluate: RuntimeError: boom",
    ]


def test_the_whole_log_is_there_on_request():
    everything = readable_log(LOG, everything=True)
    assert "WARN  Calibration dataset size should be more than 256. Current: 4." in everything
    assert sum("stage statistics: layers" in line for line in everything) == 3
    assert "" not in everything


def _spec(**changes):
    data = {"model": "google/gemma-4-E4B-it", "output": "x", "plan": {"ratio": 0.2},
            "calibration": {"source": str(OFFLINE_CALIBRATION_TEXT)},
            "quantize": False, "export": True, "evaluate": False, **changes}
    return parse_spec(data)


def test_every_stage_has_a_mark_and_stages_not_asked_for_say_not_run():
    state = {"id": "j1", "output": "x", "status": "running", "stage": "evaluate", "submitted_at": 0, "started_at": 0,
             "finished_at": None, "progress": {"done": 3, "total": 64, "unit": "batches", "stage_started_at": 0},
             "stages": {"calibrate": {"status": "reused"}, "statistics": {"status": "done"}, "prune": {"status": "done"},
                        "quantize": {"status": "skipped"}, "export": {"status": "done"}, "evaluate": {"status": "running"}}}
    marks = {name: (mark, meaning) for name, mark, meaning in stage_marks(state, _spec(evaluate={"source": str(OFFLINE_CALIBRATION_TEXT)}))}
    assert marks == {
        "calibrate": ("✓", "reused from an earlier run"),
        "statistics": ("✓", "done"),
        "prune": ("✓", "done"),
        "quantize": ("–", "not run: the job did not ask for it"),
        "export": ("✓", "done"),
        "evaluate": ("▶", "running"),
    }
    row = job_row_html(state, mine=False, selected=False, spec=_spec())
    assert "batch 3/64" in row and "batche" not in row and "stage 6/6: <b>evaluate</b>" in row
    assert "quantize (not run)" in row


def test_a_queued_job_already_says_which_stages_it_will_not_run():
    state = {"id": "j2", "output": "x", "status": "queued", "stage": None, "submitted_at": 0, "started_at": None,
             "finished_at": None, "progress": None, "stages": {}}
    marks = [(name, mark) for name, mark, _ in stage_marks(state, _spec())]
    assert marks == [("calibrate", "·"), ("statistics", "·"), ("prune", "·"), ("quantize", "–"), ("export", "·"),
                     ("evaluate", "–")]
