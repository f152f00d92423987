"""``prompts_and_classes.txt`` as users write it: no ``Classes`` heading, a latin-1 byte, a subject
listed twice, photo folders the table does not name."""
from __future__ import annotations

from pathlib import Path

import pytest

from threestudio_dreambooth3d.errors import SweepInputError
from threestudio_dreambooth3d.sweep.dataset import parse_prompts_and_classes, read_dreambooth_dataset

TABLE = "subject_name,class\nbackpack,backpack\nbear_plushie,stuffed animal\n"
PROMPTS = "\nObject Prompts\n\nprompt_list = [\n'a {0} {1} in the jungle'.format(unique_token, class_token),\n]\n"


def _photos(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "00.jpg")


def test_the_classes_heading_is_optional():
    for text in (TABLE + PROMPTS, "\ufeff" + TABLE + PROMPTS, "backpack,backpack\n" + PROMPTS):
        parsed = parse_prompts_and_classes(text)
        assert parsed["classes"]["backpack"] == "backpack"
        assert parsed["object"] == ["a {identifier} {class} in the jungle"]
    assert parse_prompts_and_classes(TABLE)["classes"] == {"backpack": "backpack", "bear_plushie": "stuffed animal"}


def test_errors_name_what_is_wrong():
    with pytest.raises(SweepInputError, match="lists no subjects"):
        parse_prompts_and_classes("Classes\n\nsubject_name,class\n" + PROMPTS)
    # a prompt list without its heading is named as such, not as a bad table line
    with pytest.raises(SweepInputError, match=r":4: a prompt line before an 'Object Prompts'"):
        parse_prompts_and_classes(TABLE + "'a {0} {1} in the jungle'.format(unique_token, class_token),\n")
    with pytest.raises(SweepInputError, match=r":5: .*under the 'Prompts' heading but not in a list"):
        parse_prompts_and_classes(TABLE + "Prompts\na {0} {1}\n")


def test_a_subject_listed_twice_is_refused_naming_both_lines():
    with pytest.raises(SweepInputError, match=r"'backpack' is listed twice, line 2 \(backpack,backpack\) and "
                                              r"line 4 \(backpack,bag\)"):
        parse_prompts_and_classes(TABLE + "backpack,bag\n")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    _photos(tmp_path / "backpack")
    (tmp_path / "prompts_and_classes.txt").write_bytes(b"subject_name,class\nbackpack,backpack\ncaf\xe9,cup\n")
    with pytest.raises(SweepInputError, match=r"prompts_and_classes.txt:3: byte 0xe9 at column 4 is not UTF-8"):
        read_dreambooth_dataset(tmp_path)
    # UTF-8 with accents is fine
    (tmp_path / "prompts_and_classes.txt").write_text("backpack,sac \u00e0 dos\n", encoding="utf-8")
    assert read_dreambooth_dataset(tmp_path).subjects[0].class_noun == "sac \u00e0 dos"


def test_photo_folders_missing_from_the_table_are_listed(tmp_path):
    for name in ("backpack", "bear_plushie", "cat2", "dog8"):
        _photos(tmp_path / name)
    (tmp_path / "notes").mkdir()  # no photos: not a subject folder
    (tmp_path / "prompts_and_classes.txt").write_text(TABLE + PROMPTS)
    ds = read_dreambooth_dataset(tmp_path)
    assert [s.name for s in ds.subjects] == ["backpack", "bear_plushie"]
    assert ds.unlisted == ["cat2", "dog8"]


def test_sweep_cli_warns_about_unlisted_folders(tmp_path, capsys):
    from threestudio_dreambooth3d.cli import main

    for name in ("backpack", "bear_plushie", "dog8"):
        _photos(tmp_path / "ds" / name)
    (tmp_path / "ds" / "prompts_and_classes.txt").write_text(TABLE + PROMPTS)
    try:
        main(["sweep", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "out"), "--dry-run",
              "--preset", "smoke"])
    except SystemExit:
        pass
    err = capsys.readouterr().err
    assert "not in its prompts_and_classes.txt and are not swept: dog8" in err
