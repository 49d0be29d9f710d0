import pytest
import torch

from studio.calibration import CalibrationSpec, build_calibration_ids, leading_bos, load_calibration_text, pack_samples, tokenize_stream
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


def test_bos_led_samples_are_bos_then_a_window_of_seqlen_minus_one():
    stream = torch.arange(10, 10_000)
    plain = pack_samples(stream, samples=6, seqlen=100, seed=3)
    led = pack_samples(stream, samples=6, seqlen=100, seed=3, bos=2)
    assert led.shape == (6, 100)
    assert torch.equal(led[:, 0], torch.full((6,), 2))
    assert torch.equal(led[:, 2:] - led[:, 1:-1], torch.ones(6, 98, dtype=torch.long))
    assert torch.equal(led, pack_samples(stream, samples=6, seqlen=100, seed=3, bos=2))
    assert not torch.equal(led, plain)
    with pytest.raises(ValueError, match="calibration.seqlen: must be at least 2 when every sample starts with BOS"):
        pack_samples(stream, samples=1, seqlen=1, seed=0, bos=2)
    # 99 text tokens per sample: 8 x 99 = 792 fit in 800 tokens of text; 9 do not.
    assert pack_samples(torch.arange(800), samples=8, seqlen=100, seed=0, bos=2).shape == (8, 100)
    with pytest.raises(ValueError, match=r"has 800 tokens but .* 9 x 100 = 891 text tokens .*each sample also has a BOS"):
        pack_samples(torch.arange(800), samples=9, seqlen=100, seed=0, bos=2)


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
        ("seed", "x", "calibration.seed: must be a non-negative integer, got 'x'"),
        ("seed", -1, "calibration.seed: must be a non-negative integer, got -1"),  # the job spec's rule, now everywhere
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


def test_every_calibration_sample_starts_with_the_tokenizers_bos(demo_model_dir, calibration_text):
    tokenizer = text_tokenizer(load_tokenizer(demo_model_dir))
    bos = tokenizer.bos_token_id
    assert leading_bos(tokenizer) == bos == tokenizer("x")["input_ids"][0]  # the demo tokenizer adds BOS, as Gemma's
    spec = CalibrationSpec(source=str(calibration_text), samples=4, seqlen=64, seed=1)
    ids = build_calibration_ids(tokenizer, spec)
    assert torch.equal(ids[:, 0], torch.full((4,), bos))
    assert bos not in ids[:, 1:].tolist()
    # The rest of each sample is a window of the text's token stream.
    stream = tokenize_stream(tokenizer, load_calibration_text(spec)).tolist()
    for row in ids[:, 1:].tolist():
        assert any(stream[s : s + 63] == row for s in range(len(stream) - 62) if stream[s] == row[0])


def test_a_tokenizer_without_bos_gives_plain_windows(demo_model_dir, calibration_text):
    tokenizer = text_tokenizer(load_tokenizer(demo_model_dir))
    tokenizer.backend_tokenizer.post_processor = None  # encodes text without any special token
    assert leading_bos(tokenizer) is None
    spec = CalibrationSpec(source=str(calibration_text), samples=4, seqlen=64, seed=1)
    ids = build_calibration_ids(tokenizer, spec)
    stream = tokenize_stream(tokenizer, load_calibration_text(spec))
    assert torch.equal(ids, pack_samples(stream, 4, 64, 1))
    assert tokenizer.bos_token_id not in ids.tolist()
