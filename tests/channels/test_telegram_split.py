from __future__ import annotations

from channels.telegram.split import split_message, split_ranges, utf16_len


def parts(text: str, limit: int) -> list[str]:
    return [text[a:b] for a, b in split_ranges(text, limit)]


def test_short_text_is_one_part():
    assert parts("hello", 10) == ["hello"]


def test_paragraph_then_line_then_word_then_hard():
    assert parts("aaaa\n\nbbbb\ncccc", 12) == ["aaaa", "bbbb\ncccc"]
    assert parts("aaaa bbbb\ncccc dddd", 12) == ["aaaa bbbb", "cccc dddd"]
    assert parts("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]
    assert parts("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_limit_counts_utf16_units_and_never_splits_a_surrogate_pair():
    text = "😀" * 5  # two UTF-16 units each
    got = parts(text, 4)
    assert got == ["😀😀", "😀😀", "😀"]
    assert all(utf16_len(p) <= 4 for p in got)


def test_blank_parts_are_skipped():
    assert parts("aaaa\n\n\n\n\n\nbbbb", 5) == ["aaaa", "bbbb"]


def test_entities_are_clipped_and_rebased_per_part():
    text = "bold😀 one\n\nsecond part"
    entities = [
        {"type": "bold", "offset": 0, "length": 6},  # "bold😀" (the emoji is two units)
        {"type": "italic", "offset": 7, "length": 9},  # "one\n\nseco" crosses the cut
    ]
    got = split_message(text, entities, limit=12)
    assert [t for t, _ in got] == ["bold😀 one", "second part"]
    assert got[0][1] == [{"type": "bold", "offset": 0, "length": 6}, {"type": "italic", "offset": 7, "length": 3}]
    assert got[1][1] == [{"type": "italic", "offset": 0, "length": 4}]
