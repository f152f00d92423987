"""``dreambooth3d sweep``'s input: google/dreambooth's layout, its prompt list, subject specs and templates."""
from __future__ import annotations

import pytest

from threestudio_dreambooth3d.sweep.dataset import SweepInputError, check_template, parse_prompts_and_classes, parse_subject_spec, read_dreambooth_dataset

from fakes import write_dreambooth_dataset


def test_reads_the_dreambooth_layout_with_multiword_classes_and_live_prompts(tmp_path):
    ds = read_dreambooth_dataset(write_dreambooth_dataset(tmp_path / "dataset"))
    by_name = {s.name: s for s in ds.subjects}
    assert list(by_name) == ["backpack", "bear_plushie", "dog"]
    assert by_name["bear_plushie"].class_noun == "stuffed animal" and not by_name["bear_plushie"].live
    assert by_name["dog"].live and not by_name["backpack"].live
    assert by_name["dog"].folder == (tmp_path / "dataset" / "dog").resolve()
    # dogs and cats get the live-subject list, everything else the object list
    assert ds.prompts_for(by_name["dog"])[1] == "a {identifier} {class} wearing a red hat"
    assert ds.prompts_for(by_name["bear_plushie"])[1] == "a {identifier} {class} on top of pink fabric"
    # a checkout of google/dreambooth (the file under dataset/) works too, and --subjects picks
    ds2 = read_dreambooth_dataset(tmp_path, only=["dog", "bear_plushie"])
    assert [s.name for s in ds2.subjects] == ["dog", "bear_plushie"]


def test_dataset_errors_name_the_problem(tmp_path):
    root = write_dreambooth_dataset(tmp_path / "dataset")
    with pytest.raises(SweepInputError, match="'cat' is not in .*prompts_and_classes.txt"):
        read_dreambooth_dataset(root, only=["cat"])
    import shutil

    shutil.rmtree(root / "dog")
    with pytest.raises(SweepInputError, match="lists subject 'dog' but .*dog is not a folder"):
        read_dreambooth_dataset(root)
    with pytest.raises(SweepInputError, match="No prompts_and_classes.txt"):
        read_dreambooth_dataset(root / "backpack")
    with pytest.raises(SweepInputError, match=r"prompts_and_classes.txt:4: expected 'subject_name,class'"):
        parse_prompts_and_classes("Classes\n\nsubject_name,class\nbackpack\n")


def test_templates_and_subject_specs():
    assert check_template("a {identifier} {class} in the snow")
    with pytest.raises(SweepInputError, match=r"lacks \{class\}"):
        check_template("a {identifier} dog")
    with pytest.raises(SweepInputError, match=r"uses \{subject\}"):
        check_template("a {identifier} {class} and {subject}")


def test_subject_spec_keeps_a_multiword_class(tmp_path):
    (tmp_path / "bear").mkdir()
    s = parse_subject_spec(f"{tmp_path / 'bear'}:stuffed  animal")
    assert (s.name, s.class_noun, s.live) == ("bear", "stuffed animal", False)
    with pytest.raises(SweepInputError, match="expected FOLDER:CLASS"):
        parse_subject_spec(str(tmp_path / "bear"))
    with pytest.raises(SweepInputError, match="is not a folder"):
        parse_subject_spec(f"{tmp_path / 'nope'}:dog")
