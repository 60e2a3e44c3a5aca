"""Run the parties of a protocol side by side in one process (tests, benchmarks, demos).

Every party is a zero-argument callable run in its own daemon thread; :func:`run_parties` waits for
them and hands back what each returned. Nothing a party does is lost: its exception is re-raised in the
caller's thread, and a party still running at the deadline is reported by name instead of being left
behind unnoticed::

    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    out = run_parties({"host": lambda: host.serve(features),
                       "guest": lambda: guest.fit(inter, items).close()}, timeout=60)

Errors. By default the first party to raise (in time, not in mapping order) ends the run at once: its
exception object itself is re-raised, with a note ``in party 'NAME'`` (``BaseException.add_note``), so
``pytest.raises(HeteroFMError)`` and ``except PeerDiedError`` keep matching the original type and
message. The other parties are not waited for: they are daemon threads, usually about to fail on the
dead peer, and the run has already failed loudly.

When more than one party is expected to fail (a killed host: the guest fails on the dead peer, the host
on its own dead channel), pass ``return_exceptions=True`` (as in ``asyncio.gather``): every party is
waited for, and a party's exception (with the same note) is its value in the result.

Either way a party that has not returned at the deadline raises :class:`PartyHungError` naming it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar, cast, overload

__all__ = ["PartyHungError", "run_parties"]

T = TypeVar("T")


class PartyHungError(TimeoutError):
    """A party was still running when :func:`run_parties` reached its deadline.

    ``party`` is the first such party (in mapping order), ``running`` all of them, ``timeout`` the
    deadline in seconds; ``failed`` maps the parties that raised meanwhile to their exceptions.
    """

    def __init__(self, running: tuple[str, ...], timeout: float,
                 failed: Mapping[str, BaseException] | None = None) -> None:
        self.party = running[0]
        self.running = running
        self.timeout = timeout
        self.failed = dict(failed or {})
        names = ", ".join(repr(n) for n in running)
        also = "".join(f"; party {n!r} failed: {type(e).__name__}: {e}" for n, e in self.failed.items())
        super().__init__(f"party {names} still running after {timeout:g} s{also}")


@overload
def run_parties(parties: Mapping[str, Callable[[], T]], *, timeout: float,
                return_exceptions: Literal[False] = False) -> dict[str, T]: ...


@overload
def run_parties(parties: Mapping[str, Callable[[], T]], *, timeout: float,
                return_exceptions: Literal[True]) -> dict[str, T | BaseException]: ...


def run_parties(parties: Mapping[str, Callable[[], T]], *, timeout: float,
                return_exceptions: bool = False) -> dict[str, T] | dict[str, T | BaseException]:
    """Run each of ``parties`` (name -> callable) in its own thread; return name -> what it returned.

    Parameters
    ----------
    parties:
        At least one party; the names appear in errors and thread names (``party-NAME``).
    timeout:
        Seconds for the whole run (all parties together), > 0.
    return_exceptions:
        False: re-raise the first exception raised by any party as soon as it is raised, annotated
        ``in party 'NAME'``. True: wait for every party; an exception is that party's value.

    Raises
    ------
    PartyHungError
        A party had not returned after ``timeout`` seconds (and, unless ``return_exceptions``, none
        had raised).
    """
    if not parties:
        raise ValueError("run_parties: at least one party is required")
    if not timeout > 0:
        raise ValueError(f"run_parties: timeout must be positive, got {timeout!r}")
    for name, fn in parties.items():
        if not callable(fn):
            raise TypeError(f"run_parties: party {name!r} is {type(fn).__name__}, not a callable")

    done: queue.SimpleQueue[tuple[str, bool, object]] = queue.SimpleQueue()

    def play(name: str, fn: Callable[[], T]) -> None:
        try:
            value: object = fn()
        except BaseException as exc:  # handed to the caller's thread: never an unhandled thread exception
            exc.add_note(f"in party {name!r}")
            done.put((name, False, exc))
        else:
            done.put((name, True, value))

    deadline = time.monotonic() + timeout
    for name, fn in parties.items():
        threading.Thread(target=play, args=(name, fn), name=f"party-{name}", daemon=True).start()

    results: dict[str, object] = {}
    failed: dict[str, BaseException] = {}
    while len(results) < len(parties):
        left = deadline - time.monotonic()
        try:
            name, ok, value = done.get(timeout=left) if left > 0 else done.get_nowait()
        except queue.Empty:
            break
        if not ok:
            assert isinstance(value, BaseException)
            if not return_exceptions:
                raise value
            failed[name] = value
        results[name] = value
    running = tuple(n for n in parties if n not in results)
    if running:
        raise PartyHungError(running, timeout, failed)
    return cast("dict[str, T | BaseException]", {name: results[name] for name in parties})
