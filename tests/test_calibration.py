import pytest
import torch

from studio.calibration import CalibrationSpec, build_calibration_ids, pack_samples
from studio.flap.pipeline import load_tokenizer, text_tokenizer


def test_pack_samples_is_deterministic_and_shaped():
    stream = torch.arange(10_000)
    a = pack_samples(stream, samples=6, seqlen=100, seed=3)
    b = pack_samples(stream, samples=6, seqlen=100, seed=3)
    c = pack_samples(stream, samples=6, seqlen=100, seed=4)
    assert a.shape == (6, 100)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Every sample is a contiguous window of the stream.
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(6, 99, dtype=torch.long))


def test_too_little_text_says_how_much_there_is():
    with pytest.raises(ValueError, match=r"has 500 tokens but .* 8 x 100 = 800"):
        pack_samples(torch.arange(500), samples=8, seqlen=100, seed=0)
    with pytest.raises(ValueError, match=r"has 50 tokens, fewer than one sample"):
        pack_samples(torch.arange(50), samples=1, seqlen=100, seed=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("samples", 0, "calibration.samples: must be a positive integer"),
        ("seqlen", -5, "calibration.seqlen: must be a positive integer"),
        ("seed", "x", "calibration.seed: must be an integer"),
        ("source", " ", "calibration.source"),
    ],
)
def test_spec_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        CalibrationSpec(**{"source": "a.txt", field: value})


def test_missing_file_is_named(tmp_path):
    spec = CalibrationSpec(source=str(tmp_path / "nope.txt"), samples=1, seqlen=8)
    with pytest.raises(FileNotFoundError, match="calibration.source: no such text file"):
        build_calibration_ids(None, spec)


def test_calibration_from_local_text(demo_model_dir, calibration_text):
    tokenizer = text_tokenizer(load_tokenizer(demo_model_dir))
    spec = CalibrationSpec(source=str(calibration_text), samples=4, seqlen=64, seed=1)
    ids = build_calibration_ids(tokenizer, spec)
    assert ids.shape == (4, 64)
    assert torch.equal(ids, build_calibration_ids(tokenizer, spec))
    assert int(ids.min()) >= 0 and int(ids.max()) < tokenizer.vocab_size
