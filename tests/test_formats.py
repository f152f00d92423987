"""The small formats the package writes: folder slugs, the identifier in a prompt, durations, timestamps."""
from __future__ import annotations

import re

from threestudio_dreambooth3d.formats import format_duration, has_identifier, natural_key, now_iso, remove_identifier, slug


def test_slugs_are_folder_names_and_long_ones_never_collide():
    assert slug("A sks Dog, wearing a hat!") == "a-sks-dog-wearing-a-hat"
    assert slug("!!!") == "x"
    a, b = slug("a sks dog " + "very " * 20 + "red"), slug("a sks dog " + "very " * 20 + "blue")
    assert len(a) <= 60 and len(b) <= 60 and a != b and a.startswith("a-sks-dog-very")


def test_the_identifier_is_a_whole_word_of_the_prompt():
    assert has_identifier("a sks dog", "sks") and has_identifier("sks, a dog", "sks")
    assert not has_identifier("she asks a dog", "sks") and not has_identifier("a sksdog", "sks")
    assert has_identifier("a s.k dog", "s.k") and not has_identifier("a sak dog", "s.k")  # the name, not a regex
    assert remove_identifier("a  sks dog, asks", "sks") == "a dog, asks"
    assert remove_identifier(" a  dog ", "") == "a dog"


def test_durations_and_timestamps():
    assert [format_duration(s) for s in (0.4, 42, 187, 3723)] == ["0s", "42s", "3m07s", "1h02m03s"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", now_iso())


def test_natural_order_compares_digit_runs_as_numbers():
    names = ["it2-test/10.png", "it2-test/2.png", "it2-test/1.png", "it10-test/0.png"]
    assert sorted(names, key=natural_key) == ["it2-test/1.png", "it2-test/2.png", "it2-test/10.png", "it10-test/0.png"]
