"""Messages, images as data URLs, and the statistics clock."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.serve.chat import (
    RANDOM_SEED,
    SamplingSettings,
    StatsClock,
    data_url_to_image,
    image_to_data_url,
    message_image_urls,
    message_text,
    user_message,
)


def test_an_image_survives_the_data_url_round_trip(tmp_path):
    image = Image.new("RGB", (7, 5), (1, 2, 3))
    url = image_to_data_url(image)
    assert url.startswith("data:image/png;base64,")
    back = data_url_to_image(url)
    assert back.size == (7, 5) and back.getpixel((6, 4)) == (1, 2, 3)
    path = tmp_path / "pic.png"
    image.save(path)
    assert image_to_data_url(path) == url  # a file path gives the same URL
    jpeg = image_to_data_url(Image.new("RGBA", (4, 4)), format="JPEG")
    assert jpeg.startswith("data:image/jpeg;base64,") and data_url_to_image(jpeg).size == (4, 4)


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://example.invalid/cat.png", "expected a base64 data URL"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:image/png;base64,aGVsbG8=", "does not hold a readable image"),
    ],
)
def test_bad_data_urls_name_the_problem(url, problem):
    with pytest.raises(ValueError, match=f"^image_url: .*{problem}"):
        data_url_to_image(url)


def test_user_messages_put_images_before_the_text():
    url = image_to_data_url(Image.new("RGB", (2, 2)))
    message = user_message("what is it?", [Image.new("RGB", (2, 2)), url])
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["image_url", "image_url", "text"]
    assert message_image_urls(message) == [url, url]
    assert message_text(message) == "what is it?"
    assert user_message("plain") == {"role": "user", "content": "plain"}
    assert message_text(user_message("plain")) == "plain" and message_image_urls(user_message("plain")) == []
    with pytest.raises(ValueError, match="^message: needs text or at least one image"):
        user_message("")


def test_stats_without_text_have_no_rates():
    stats = StatsClock().finish(prompt_tokens=3, output_tokens=0, finish_reason="stop")
    assert stats.ttft_s is None and stats.tokens_per_s is None
    assert stats.total_s >= 0
    clock = StatsClock()
    clock.mark_text()
    one = clock.finish(prompt_tokens=3, output_tokens=1, finish_reason="length")
    assert one.ttft_s is not None and one.tokens_per_s is None  # one token gives no decode speed


def test_sampling_settings_from_a_form():
    """Widgets hand numbers over as floats; the seed field's RANDOM_SEED (or nothing) means random."""
    settings = SamplingSettings.from_form(0, 1, 12.0, 3.0)
    assert settings == SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=12, seed=3)
    assert isinstance(settings.max_tokens, int) and isinstance(settings.seed, int)
    for random_seed in (RANDOM_SEED, float(RANDOM_SEED), "", None):
        assert SamplingSettings.from_form(0.7, 0.95, 256, random_seed).seed is None
    assert SamplingSettings.from_form(0.7, 0.95, 256, 0).seed == 0


@pytest.mark.parametrize(
    "values, message",
    [
        ((2.5, 0.9, 8, None), "temperature: must be between 0 and 2, got 2.5"),
        ((0.7, 0.0, 8, None), "top_p: must be in (0, 1], got 0.0"),
        ((0.7, 1.5, 8, None), "top_p: must be in (0, 1], got 1.5"),
        ((0.7, 0.9, 0, None), "max_tokens: must be a positive integer, got 0"),
        ((0.7, 0.9, 8.5, None), "max_tokens: must be a positive integer, got 8.5"),
        ((0.7, 0.9, 8, -2), "seed: must be a non-negative integer or None, got -2"),
    ],
)
def test_sampling_settings_name_the_bad_field(values, message):
    with pytest.raises(ValueError) as err:
        SamplingSettings.from_form(*values)
    assert str(err.value) == message
