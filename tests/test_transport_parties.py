"""run_parties: every party's result, the first error re-raised naming its party, hung parties named."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fedrec.transport import PartyHungError, run_parties


class Boom(RuntimeError):
    pass


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked parties wait on; set when the test ends so their threads finish."""
    event = threading.Event()
    yield event
    event.set()


def test_returns_every_partys_result_by_name_each_from_its_own_thread() -> None:
    out = run_parties({"guest": lambda: threading.current_thread().name,
                       "host": lambda: threading.current_thread().name}, timeout=5)
    assert out == {"guest": "party-guest", "host": "party-host"}
    assert list(out) == ["guest", "host"]


def test_parties_run_concurrently() -> None:
    barrier = threading.Barrier(2, timeout=5)  # each party needs the other to be running
    assert run_parties({"a": barrier.wait, "b": barrier.wait}, timeout=5).keys() == {"a", "b"}


def test_a_partys_error_is_re_raised_as_itself_with_a_note_naming_the_party() -> None:
    def host() -> None:
        raise Boom("no partials")

    with pytest.raises(Boom, match="no partials") as info:
        run_parties({"guest": lambda: 1, "host": host}, timeout=5)
    assert info.value.__notes__ == ["in party 'host'"]


def test_first_error_ends_the_run_without_waiting_for_the_others(release: threading.Event) -> None:
    def guest() -> bool:
        raise Boom("setup rejected")

    t0 = time.monotonic()
    with pytest.raises(Boom, match="setup rejected"):
        run_parties({"host": release.wait, "guest": guest}, timeout=30)
    assert time.monotonic() - t0 < 5


def test_a_hung_party_is_named_within_the_timeout(release: threading.Event) -> None:
    t0 = time.monotonic()
    with pytest.raises(PartyHungError, match=r"party 'host' still running after 0.5 s") as info:
        run_parties({"guest": lambda: 1, "host": release.wait}, timeout=0.5)
    assert 0.5 <= time.monotonic() - t0 < 3
    assert (info.value.party, info.value.running, info.value.timeout) == ("host", ("host",), 0.5)


def test_when_both_fail_the_first_in_time_is_reported_not_the_first_in_the_mapping() -> None:
    def late() -> None:
        time.sleep(0.3)
        raise Boom("late")

    def early() -> None:
        raise PermissionError("early")

    with pytest.raises(PermissionError, match="early") as info:
        run_parties({"late": late, "early": early}, timeout=5)
    assert info.value.__notes__ == ["in party 'early'"]


def test_return_exceptions_waits_for_every_party_and_returns_their_errors() -> None:
    def late() -> None:
        time.sleep(0.3)
        raise Boom("late")

    def early() -> None:
        raise PermissionError("early")

    parties: dict[str, Callable[[], int | None]] = {"late": late, "early": early, "ok": lambda: 3}
    out = run_parties(parties, timeout=5, return_exceptions=True)
    assert isinstance(out["late"], Boom) and out["late"].__notes__ == ["in party 'late'"]
    assert isinstance(out["early"], PermissionError) and out["ok"] == 3


def test_return_exceptions_still_names_a_hung_party_and_the_failed_ones(release: threading.Event) -> None:
    def guest() -> bool:
        raise Boom("dead peer")

    with pytest.raises(PartyHungError, match=r"party 'host' still running .* party 'guest' failed: Boom") \
            as info:
        run_parties({"guest": guest, "host": release.wait}, timeout=0.5, return_exceptions=True)
    assert isinstance(info.value.failed["guest"], Boom)


@pytest.mark.parametrize(("parties", "timeout", "error"), [
    ({}, 1.0, "at least one party"),
    ({"a": lambda: 1}, 0.0, "timeout must be positive"),
])
def test_arguments_are_validated(parties: dict[str, object], timeout: float, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        run_parties(parties, timeout=timeout)  # type: ignore[arg-type]


def test_a_party_must_be_callable() -> None:
    with pytest.raises(TypeError, match="party 'host' is int, not a callable"):
        run_parties({"host": 3}, timeout=1)  # type: ignore[arg-type]
