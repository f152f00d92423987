"""The summary page: one description, two renderers that show all of it."""
from __future__ import annotations

from typing import get_args

from threestudio_dreambooth3d.pipeline.summary import (Block, CodeBlocks, CodeList, Evaluation, Images, Links, Page,
                                                       Section, Table, Videos, render_html, render_markdown,
                                                       update_eval_section)

SCORES = {"prompt": "p7", "clip_prompt": "q7", "views": {"count": 3, "folder": "f7"},
          "clip": {"c7": {"r_precision": 0.5, "clip_t": 0.25, "clip_i": None}}, "warnings": ["w7"]}


def test_html_and_markdown_render_every_block_of_one_page():
    blocks = [Images(["i/1.png"], thumbnails=True), Videos(["v/2.mp4"]), Links(["m/3.obj"]), CodeList(["k/4"]),
              Table(["head5"], [["cell5"]]), CodeBlocks([("title6", ["cmd 6"])]), Evaluation(SCORES)]
    assert {type(b) for b in blocks} == set(get_args(Block))  # the test covers every kind of block
    page = Page("T <1>", [("text", "a "), ("code", "c&d"), ("text", " "), ("em", "e")],
                [Section(f"S{i}", b) for i, b in enumerate(blocks, 1)], warnings=["run warning <8>"])
    md, html = render_markdown(page), render_html(page)
    for text in ("S1", "S7", "i/1.png", "v/2.mp4", "m/3.obj", "k/4", "head5", "cell5", "title6", "cmd 6", "p7", "q7", "f7",
                 "c7", "R-precision 0.5000, CLIP-T 0.2500", "warning: w7"):
        assert text in md and text in html, text
    assert md.startswith("# T <1>\n\na `c&d` *e*\n\n> warning: run warning <8>\n")
    assert "warning: run warning &lt;8&gt;" in html
    assert "CLIP-I" not in md and "CLIP-I" not in html  # a missing score is left out and "<h1>T &lt;1&gt;</h1><p>a <code>c&amp;d</code> <i>e</i></p>" in html
    assert "![1.png](i/1.png)" in md and "<img class='t' src='i/1.png'>" in html
    assert "| head5 |\n| --- |\n| cell5 |" in md and "<th>head5</th>" in html and "<td>cell5</td>" in html
    assert "title6:\n\n```sh\ncmd 6\n```" in md and "<h3>title6</h3><pre>cmd 6</pre>" in html


def test_eval_rewrites_the_evaluation_section_of_both_files_and_keeps_the_rest(tmp_path):
    page = Page("T", [("text", "intro")], [Section("Evaluation", Evaluation(None)), Section("After", CodeList(["k9"]))])
    (tmp_path / "summary.html").write_text(render_html(page))
    (tmp_path / "SUMMARY.md").write_text(render_markdown(page))
    assert "Not evaluated yet" in (tmp_path / "summary.html").read_text()
    assert update_eval_section(tmp_path / "summary.html", SCORES)
    for name in ("summary.html", "SUMMARY.md"):
        text = (tmp_path / name).read_text()
        assert "R-precision 0.5000" in text and "Not evaluated yet" not in text and "k9" in text, name
        assert text.count("Evaluation") == 1, name
    assert not update_eval_section(tmp_path / "nowhere.html", SCORES)
