"""The failure table: stable, distinct codes, and close reasons that fit a close frame."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker import errors
from broker.errors import ALL_FAILURES, NO_CONSOLE, TOKEN_USED, BrokerError, truncate_reason

# The published codes, written out here and not derived from broker/errors.py: clients
# (panels, the console page) depend on them, so none may change or vanish unnoticed.
PUBLISHED = {
    "token_missing": 4100, "token_invalid": 4101, "token_expired": 4102, "token_used": 4103,
    "token_revoked": 4104, "session_ended": 4105, "origin_refused": 4106,
    "domain_not_found": 4200, "domain_not_running": 4201, "no_console": 4202, "console_unreachable": 4203,
    "libvirt_unavailable": 4204, "libvirt_error": 4205, "vnc_auth_failed": 4206, "vnc_handshake_failed": 4207,
    "console_busy": 4208, "console_exclusive": 4209,
    "vm_stopped": 4300, "console_closed": 4301, "unsupported_data": 4302, "taken_over": 4303,
    "exclusive_taken": 4304,
    "session_killed": 4305,
    "too_many_sessions": 4400, "too_many_viewers": 4401, "busy": 4402, "idle_timeout": 4403,
    "session_time_limit": 4404, "shutting_down": 1001,
    "unauthorized": 0, "forbidden": 0, "invalid_input": 0, "rate_limited": 0, "session_not_found": 0,
}  # fmt: skip


def test_the_published_codes_hold() -> None:
    assert {f.slug: f.close_code for f in ALL_FAILURES} == PUBLISHED


def test_every_failure_defined_is_in_the_table() -> None:
    defined = [v for v in vars(errors).values() if isinstance(v, errors.Failure)]
    assert len(ALL_FAILURES) == len(defined)


def test_slugs_are_distinct_snake_case() -> None:
    slugs = [f.slug for f in ALL_FAILURES]
    assert len(set(slugs)) == len(slugs)
    assert all(s.replace("_", "").isalpha() and s == s.lower() for s in slugs)


def test_websocket_close_codes_are_distinct_and_application_range() -> None:
    codes = [f.close_code for f in ALL_FAILURES if f.close_code]
    assert len(set(codes)) == len(codes)
    # Our own codes are in the application range; shutting down uses the standard 1001 (going away).
    assert all(4000 <= code <= 4999 for code in codes if code != 1001)
    assert [f.slug for f in ALL_FAILURES if f.close_code == 1001] == ["shutting_down"]


def test_rest_only_failures_have_no_close_code() -> None:
    assert {f.slug for f in ALL_FAILURES if not f.close_code} == {
        "unauthorized",
        "forbidden",
        "invalid_input",
        "rate_limited",
        "session_not_found",
    }


def test_http_statuses_are_errors() -> None:
    assert all(400 <= f.http_status <= 599 for f in ALL_FAILURES)


def test_summaries_fit_a_close_frame() -> None:
    assert all(0 < len(f.summary.encode()) <= 123 for f in ALL_FAILURES)


def test_message_is_the_detail_or_the_summary() -> None:
    assert BrokerError(NO_CONSOLE).message == NO_CONSOLE.summary
    assert BrokerError(NO_CONSOLE, "Domain 'vm' has none.").message == "Domain 'vm' has none."
    assert str(BrokerError(NO_CONSOLE, "detail")) == "detail"


def test_to_json() -> None:
    assert BrokerError(TOKEN_USED).to_json() == {"error": {"code": "token_used", "message": TOKEN_USED.summary}}


def test_long_close_reason_is_cut_to_123_bytes() -> None:
    reason = BrokerError(NO_CONSOLE, "x" * 500).close_reason
    assert len(reason.encode()) == 123
    assert reason.endswith("...")


def test_short_close_reason_is_untouched() -> None:
    assert truncate_reason("ü" * 61) == "ü" * 61


@given(st.text(), st.integers(min_value=3, max_value=200))
def test_truncated_reason_is_valid_utf8_within_the_limit(text: str, limit: int) -> None:
    text = text.encode(errors="replace").decode()  # close reasons are real UTF-8 text
    cut = truncate_reason(text, limit)
    assert len(cut.encode()) <= limit
    assert cut == text or cut.endswith("...")


def test_readme_documents_every_close_code() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for failure in ALL_FAILURES:
        if failure.close_code:
            assert f"| {failure.close_code} | `{failure.slug}` |" in readme, failure.slug
