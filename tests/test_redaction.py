"""`redact_url` hides passwords and credential parameters, and keeps where the URL points."""

import pytest

from studio.redaction import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@queue.example:6379/0", "redis://:***@queue.example:6379/0"),
        ("rediss://worker:s3cret@queue.example:6380/2", "rediss://worker:***@queue.example:6380/2"),
        ("redis://s3cret@queue.example/0", "redis://***@queue.example/0"),
        ("redis://queue.example:6379/0?password=s3cret&db=1", "redis://queue.example:6379/0?password=***&db=1"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://a%40b:p%40ss@host/0", "redis://a%40b:***@host/0"),
    ],
)
def test_passwords_are_replaced_and_the_rest_kept(url, shown):
    assert redact_url(url) == shown


def test_text_that_is_not_a_url_is_hidden_whole():
    assert redact_url("redis://[::1:s3cret@host/0") == "***"
