"""One retry policy: the Python client's copy (flashtensors.stores.deadline,
flashtensors.stores.http_client) is the native reader's (csrc/http_protocol.h)."""

from flashtensors import _native
from flashtensors.stores import deadline, http_client


def test_the_retryable_statuses_are_the_native_readers():
    native = _native.module()
    assert [s for s in range(100, 1000) if deadline.retryable_status(s)] == \
        [s for s in range(100, 1000) if native.http_retryable_status(s)]


def test_the_redirect_cap_is_the_native_readers():
    assert http_client.MAX_REDIRECTS == _native.module().HTTP_MAX_REDIRECTS


def test_retry_after_is_read_as_the_native_reader_reads_it():
    native = _native.module()
    for value in ["0", "1", "30", "3600", "86400", "", " 5 ", "-1", "1.5", "Wed, 21 Oct 2026 07:28:00 GMT",
                  "9" * 19]:
        head = f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: {value}".encode()
        assert native.http_plan_body(head, 0, 10)[7] == deadline.retry_after(value), value
