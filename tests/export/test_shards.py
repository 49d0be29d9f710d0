"""Shard sizes as `max_shard_size` takes them."""

from __future__ import annotations

import pytest

from studio.export.shards import parse_size


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("4GiB") == 4 * 2**30
    assert parse_size(1234) == 1234 and parse_size("1.5 kb") == 1500
    with pytest.raises(ValueError, match="max_shard_size: expected a size"):
        parse_size("2 parsecs")
