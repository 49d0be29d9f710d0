"""Showing connection URLs without their secrets.

Every place that prints, logs or displays a URL that may carry a password (STUDIO_REDIS_URL in queue
errors, worker logs, the page) goes through `redact_url`.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
# Query parameters that carry credentials (redis-py reads `password` from the query string too).
SECRET_QUERY_KEYS = frozenset({"password", "pass", "passwd", "pwd", "token", "secret", "auth"})


def redact_url(url: str) -> str:
    """`url` with the password of its user info and any credential query parameter replaced by ***.

    The user name, host, port, path and the other query parameters stay readable, so the message
    still says where the connection went. Text that does not parse as a URL is hidden entirely.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        # A lone user-info field may itself be the secret (a token in place of a user), so hide it too.
        netloc = f"{user}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(key, REDACTED if key.lower() in SECRET_QUERY_KEYS else value) for key, value in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
