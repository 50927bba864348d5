"""The pure decisions: what an API answer means, how long to wait, where a token may go."""

from __future__ import annotations

import random

import pytest

from oauthpw_async import RetryPolicy, UsageError, rate_limit_delay
from oauthpw_async._api import resolve_url
from oauthpw_async._httputil import origin
from oauthpw_async.responses import classify_api_response

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "headers", "action", "wait"),
    [
        (200, {}, "ok", None),
        (204, {}, "ok", None),
        (401, {}, "renew", None),
        (401, {"Retry-After": "5"}, "renew", None),
        (302, {"Location": "/next"}, "redirect", None),
        (307, {"location": "https://x/"}, "redirect", None),
        (302, {}, "fail", None),
        (304, {"Location": "/x"}, "fail", None),
        (429, {}, "pause", None),
        (429, {"Retry-After": "7"}, "pause", 7.0),
        (503, {"Retry-After": "0"}, "pause", 0.0),
        (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)}, "pause", 12.0),
        (403, {"x-rate-limit-remaining": "0"}, "pause", None),
        (403, {"X-RateLimit-Remaining": "3"}, "fail", None),
        (403, {}, "fail", None),
        (0, {}, "retry", None),
        (408, {}, "retry", None),
        (500, {}, "retry", None),
        (502, {"Retry-After": "3"}, "retry", 3.0),
        (400, {}, "fail", None),
        (404, {"Retry-After": "3"}, "fail", None),
    ],
)
def test_classify_api_response(status: int, headers: dict[str, str], action: str, wait: float | None) -> None:
    verdict = classify_api_response(status, headers, NOW)
    assert verdict.action == action
    assert verdict.wait == (pytest.approx(wait) if wait is not None else None)


def test_rate_limit_headers_every_form() -> None:
    assert rate_limit_delay({"Retry-After": "12"}, NOW) == 12
    assert rate_limit_delay({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, NOW) == pytest.approx(10, abs=1)
    assert rate_limit_delay({"X-RateLimit-Reset": str(int(NOW) + 30)}, NOW) == pytest.approx(30)
    assert rate_limit_delay({"X-RateLimit-Reset": str(int(NOW + 30) * 1000)}, NOW) == pytest.approx(30)
    assert rate_limit_delay({"x-rate-limit-reset": str(int(NOW) + 5)}, NOW) == pytest.approx(5)
    assert rate_limit_delay({"X-RateLimit-Reset": "2023-11-14T22:13:40Z"}, NOW) == pytest.approx(20, abs=1)
    assert rate_limit_delay({"RateLimit-Reset": "7"}, NOW) == 7
    assert rate_limit_delay({"Retry-After": "-3"}, NOW) == 0
    for junk in ("garbage", "nan", "inf", ""):
        assert rate_limit_delay({"Retry-After": junk}, NOW) is None
    assert rate_limit_delay({}, NOW) is None


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=1.0)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0), (500, 8.0)]:
        draws = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws) and max(draws) > ceiling * 0.8
    half = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.5)
    assert all(2.0 <= half.backoff(2, rng) <= 4.0 for _ in range(200))


def test_retrying_stops_on_attempts_deadline_and_long_server_waits() -> None:
    rng = random.Random(2)
    r = RetryPolicy(max_attempts=3, base_delay=0.1).start(0.0, rng)
    assert r.next_delay(0.0) is not None and r.next_delay(0.0) is not None
    assert r.next_delay(0.0) is None and "3 attempts" in r.stop_reason

    r = RetryPolicy(max_attempts=10, max_wait=60).start(0.0, rng)
    assert r.next_delay(0.0, hint=30.0) == pytest.approx(30.0, abs=0.5)
    assert r.next_delay(0.0, hint=3600.0) is None and "3600s" in r.stop_reason

    r = RetryPolicy(max_attempts=10, base_delay=1.0, deadline=5.0).start(0.0, rng)
    assert r.next_delay(4.5, hint=1.0) is None and "deadline" in r.stop_reason


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"base_delay": -1}, {"deadline": float("inf")}])
def test_retry_policy_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Api.Example.com/x?y=1", "https://api.example.com:443"),
        ("https://api.example.com:443/", "https://api.example.com:443"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:81/a", "http://[::1]:81"),
        ("https://user:pw@evil.example/", "https://evil.example:443"),
        ("ftp://x/", "null"),
        ("/relative", "null"),
        ("http://h:99999/", "null"),
    ],
)
def test_origin(url: str, expected: str) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize(
    ("base", "target", "expected"),
    [
        ("https://h/servicenow", "/api/now/table/incident", "https://h/servicenow/api/now/table/incident"),
        ("https://h/servicenow/", "api/now/table/incident", "https://h/servicenow/api/now/table/incident"),
        ("https://h", "/api/x?a=1", "https://h/api/x?a=1"),
        ("https://h/base", "https://other/x", "https://other/x"),
    ],
)
def test_paths_resolve_under_the_base_url(base: str, target: str, expected: str) -> None:
    assert resolve_url(base, target) == expected
