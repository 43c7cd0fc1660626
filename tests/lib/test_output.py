"""agentide.lib.output: incremental decoding, NUL stripping, binary summaries, capped capture."""

from __future__ import annotations

import tracemalloc

from agentide.lib.output import CappedOutput, StreamDecoder, decode_output, looks_binary


def test_a_character_split_across_chunks_stays_whole() -> None:
    data = "h€llo ✓ 😀".encode()
    decoder = StreamDecoder()
    text = "".join(decoder.feed(data[i : i + 1]) for i in range(len(data))) + decoder.finish()
    assert text == "h€llo ✓ 😀"


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode_output(b"a\xffb\xc3") == "a\ufffdb\ufffd"


def test_nul_bytes_never_come_out() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"a\x00b") + decoder.feed(b"\x00") + decoder.finish() == "ab"


def test_binary_output_is_summarised_not_passed_on() -> None:
    decoder = StreamDecoder()
    blob = bytes(range(256)) * 40
    out = decoder.feed(b"before\n") + decoder.feed(blob) + decoder.feed(blob)
    out += decoder.feed(b"after\n") + decoder.finish()
    assert out == f"before\n[binary output: {2 * len(blob)} bytes]\nafter\n"
    assert decoder.binary_bytes == 2 * len(blob)


def test_text_with_colour_codes_is_not_binary() -> None:
    assert not looks_binary(b"\x1b[31mred\x1b[0m\ttab\r\n" * 20)
    assert not looks_binary("naïve café ünïcödé ".encode() * 10)
    assert looks_binary(b"\x00\x01\x02\x03" * 100)


def test_capped_output_keeps_head_and_tail_and_counts_everything() -> None:
    capture = CappedOutput(head_chars=5, tail_chars=5)
    for piece in ["abc", "defgh", "ijklmnop", "qrstuvwxyz"]:
        capture.append(piece)
    assert capture.head == "abcde"
    assert capture.tail == "vwxyz"
    assert capture.total_chars == 26
    assert capture.truncated
    assert capture.omitted_chars == 16
    assert capture.text(marker="[{omitted}]") == "abcde[16]vwxyz"


def test_capped_output_below_the_cap_is_kept_whole() -> None:
    capture = CappedOutput(head_chars=10, tail_chars=10)
    capture.append("short")
    capture.append(" text")
    assert not capture.truncated
    assert capture.text() == "short text"


def test_a_flood_does_not_grow_memory() -> None:
    capture = CappedOutput(head_chars=64 * 1024, tail_chars=64 * 1024)
    chunk = "y\n" * 8192
    tracemalloc.start()
    try:
        for _ in range(200):
            capture.append(chunk)
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(3000):  # ~50 MB more
            capture.append(chunk)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert capture.total_chars == 3200 * len(chunk)
    assert current - baseline < 512 * 1024
    assert peak < 2 * 1024 * 1024


def test_text_lines_before_binary_in_the_same_chunk_are_kept() -> None:
    decoder = StreamDecoder()
    out = decoder.feed(b"start\nsecond\n" + b"\x00\x01\x02\x03" * 100) + decoder.finish()
    assert out == "start\nsecond\n[binary output: 400 bytes]\n"
