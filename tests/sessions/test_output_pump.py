"""Output coalescing: the first output shows at once, a stream is batched, nothing is lost."""

from __future__ import annotations

import threading

from agentide.sessions.execution import OutputPump


class Sink:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.arrived = threading.Event()

    def __call__(self, text: str) -> None:
        self.pieces.append(text)
        self.arrived.set()


def test_the_first_output_goes_out_without_waiting_for_the_interval():
    sink = Sink()
    pump = OutputPump(sink, interval_s=600, max_chars=1000)
    pump.feed("first line\n")
    # With a ten-minute window the only way this arrives is the immediate first piece.
    assert sink.arrived.wait(timeout=20)
    assert sink.pieces == ["first line\n"]
    # Right after a piece, more output waits for the window (or close).
    pump.feed("second\n")
    pump.feed("third\n")
    assert sink.pieces == ["first line\n"]
    pump.close()
    assert sink.pieces == ["first line\n", "second\nthird\n"]


def test_a_full_buffer_is_emitted_in_pieces_of_at_most_max_chars():
    sink = Sink()
    pump = OutputPump(sink, interval_s=600, max_chars=4)
    pump.feed("x")
    assert sink.arrived.wait(timeout=20)
    pump.feed("abcdefghij")
    pump.close()
    assert sink.pieces == ["x", "abcd", "efgh", "ij"]
    assert "".join(sink.pieces) == "xabcdefghij"


def test_the_pump_thread_runs_the_tick_while_no_output_comes():
    # A running cell's lease is checked from its pump's thread: no thread of its own.
    ticks: list[str] = []
    ticked = threading.Event()

    def tick() -> None:
        ticks.append(threading.current_thread().name)
        if len(ticks) >= 3:
            ticked.set()

    sink = Sink()
    pump = OutputPump(sink, interval_s=600, max_chars=1000, tick=tick, tick_s=0.01)
    assert ticked.wait(timeout=20)
    pump.feed("still pumped\n")
    assert sink.arrived.wait(timeout=20)
    pump.close()
    assert set(ticks) == {"output-pump"} and sink.pieces == ["still pumped\n"]


def test_flush_sends_the_buffer_before_it_returns():
    sink = Sink()
    pump = OutputPump(sink, interval_s=600, max_chars=1000)
    pump.feed("a")
    assert sink.arrived.wait(timeout=20)
    pump.feed("b")
    pump.flush()  # a turn switching from a model call to a command does this
    assert sink.pieces == ["a", "b"]
    pump.close()
    assert sink.pieces == ["a", "b"]


def test_the_first_output_is_emitted_by_the_feeding_thread_before_feed_returns():
    # No hop to the pump's thread (nor a database connection of its own) for the piece a
    # person waits for: it is out when feed returns, sent from the thread that read it.
    threads: list[str] = []
    sink = Sink()

    def emit(text: str) -> None:
        threads.append(threading.current_thread().name)
        sink(text)

    pump = OutputPump(emit, interval_s=600, max_chars=1000)
    pump.feed("first line\n")
    assert sink.pieces == ["first line\n"]
    assert threads == [threading.current_thread().name]
    pump.feed("coalesced\n")  # within the interval: left to the pump (here: close)
    assert sink.pieces == ["first line\n"]
    pump.close()
    assert sink.pieces == ["first line\n", "coalesced\n"]


def test_output_fed_while_a_piece_is_being_emitted_waits_for_the_next_piece():
    # A slow emit (a loaded database) must not make every later line its own emit from the
    # feeding thread: what comes meanwhile is buffered and goes out together afterwards.
    pieces: list[str] = []
    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def emit(text: str) -> None:
        pieces.append(text)
        if text == "a":
            entered.set()
            release.wait(timeout=10)
            done.set()

    pump = OutputPump(emit, interval_s=0, max_chars=1000)
    first = threading.Thread(target=pump.feed, args=("a",))
    first.start()
    assert entered.wait(timeout=20)
    pump.feed("b")
    pump.feed("c")
    still_emitting_a = not done.is_set()
    release.set()
    first.join()
    pump.close()
    assert still_emitting_a  # feed returned without waiting for the slow emit
    assert pieces[0] == "a" and "".join(pieces) == "abc"
