"""The job commands from a shell: input errors name the field (exit 2, nothing created); `run` exits 1 on failure."""

from .conftest import small_spec, studio_cli, write_spec


def test_malformed_spec_is_rejected_at_submit_and_no_job_is_created(tmp_path, studio_home, demo_model_dir):
    spec_file = write_spec(tmp_path, small_spec(demo_model_dir, calibration={"samples": -1}))
    result = studio_cli(studio_home, "submit", str(spec_file))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: calibration.samples: must be a positive integer, got -1"
    assert not (studio_home / "jobs").exists() or not any((studio_home / "jobs").iterdir())
    assert studio_cli(studio_home, "jobs").stdout.strip() == "no jobs"

    unknown = studio_cli(studio_home, "job", "20990101-000000-abcdef")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: job: no job '20990101-000000-abcdef'")


def test_run_records_a_failing_job_and_exits_1(tmp_path, studio_home, demo_model_dir):
    short_text = tmp_path / "short.txt"
    short_text.write_text("far too short for one calibration sample\n")
    spec_file = write_spec(tmp_path, small_spec(demo_model_dir, calibration={"source": str(short_text), "seqlen": 64}))
    result = studio_cli(studio_home, "run", str(spec_file), "--device", "cpu")
    assert result.returncode == 1
    assert "status    failed" in result.stdout
    assert "error     stage calibrate: ValueError: calibration: the text has" in result.stdout
    listing = studio_cli(studio_home, "jobs").stdout.split()
    assert listing[1:3] == ["failed", "calibrate"]
