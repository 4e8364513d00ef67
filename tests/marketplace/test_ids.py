"""``marketplace.ids.ordered_uuid``: RFC 9562 version 7 UUIDs, ordered by their millisecond."""

import time
import uuid

from marketplace.ids import ordered_uuid


def test_a_version_7_uuid_whose_first_48_bits_are_the_unix_milliseconds():
    before = time.time_ns() // 1_000_000
    value = ordered_uuid()
    after = time.time_ns() // 1_000_000
    assert (value.version, value.variant) == (7, uuid.RFC_4122)
    assert before <= value.int >> 80 <= after


def test_ids_of_later_milliseconds_sort_after_and_none_repeat():
    first = ordered_uuid()
    time.sleep(0.002)
    later = [ordered_uuid() for _ in range(10_000)]
    assert all(first < x for x in later)
    assert len(set(later)) == len(later)
