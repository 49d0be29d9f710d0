"""kill -9 a worker during GPTQ, start another: the quantized checkpoint equals an uninterrupted run's."""

from .test_resume import check_kill_and_resume


def test_kill_9_during_quantize_then_resume(tmp_path_factory, studio_home, demo_model_dir):
    check_kill_and_resume(tmp_path_factory, studio_home, demo_model_dir, "quantize")
