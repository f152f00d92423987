"""The summary page: one description, two renderers that show all of it."""
from __future__ import annotations

from typing import get_args

from threestudio_dreambooth3d.pipeline.summary import (Block, CodeBlocks, CodeList, Evaluation, Images, Links, Page,
                                                       Section, Table, Videos, render_html, render_markdown,
                                                       update_eval_section)
from threestudio_dreambooth3d.pipeline.runner import Runner

from fakes import FakeExecutor

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
    assert "CLIP-I" not in md and "CLIP-I" not in html  # a missing score is left out
    assert "<h1>T &lt;1&gt;</h1><p>a <code>c&amp;d</code> <i>e</i></p>" in html
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


def test_summary_links_only_existing_files_and_shows_the_commands(make_ctx):
    import re

    ctx = make_ctx()
    m = Runner(ctx, executor=FakeExecutor()).run()
    page = (ctx.out / "summary.html").read_text()
    links = re.findall(r"(?:src|href)='([^']+)'", page)
    assert any(l.endswith("stage1_turntable.mp4") for l in links) and any(l.endswith("model.glb") for l in links)
    assert all((ctx.out / l).exists() for l in links), links
    md = (ctx.out / "SUMMARY.md").read_text()
    for name in ("finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export"):
        for cmd in m.get(name).commands:
            assert cmd in md
    assert "launch.py" in m.get("stage1").commands[0]


def test_summary_shows_the_mesh_as_pictures_the_warnings_and_the_scores(make_ctx):
    from PIL import Image

    from threestudio_dreambooth3d.pipeline.summary import update_eval_section

    ctx = make_ctx()
    runner = Runner(ctx, executor=FakeExecutor())
    runner.manifest.set_run_info({"warnings": ["the prompt 'a dog' does not contain the identifier 'sks'"]})
    runner.run()
    page = (ctx.out / "summary.html").read_text()
    assert "<img src='results/mesh_views.png'" in page
    with Image.open(ctx.results_dir / "mesh_views.png") as views:
        assert views.size == (4 * 256, 256) and views.convert("L").getextrema()[0] < 250  # something drawn
    assert "warning: the prompt &#x27;a dog&#x27; does not contain the identifier" in page
    assert "Not evaluated yet" in page
    results = {"prompt": "a sks dog", "clip_prompt": "a dog", "views": {"count": 3, "folder": "x"},
               "clip": {"tiny-clip": {"r_precision": 0.5, "clip_t": 0.25, "clip_i": None}},
               "dino": {"tiny-dino": {"dino": 0.75}}, "warnings": ["no identifier in the prompt"]}
    assert update_eval_section(ctx.out / "summary.html", results)
    page = (ctx.out / "summary.html").read_text()
    assert "R-precision 0.5000, CLIP-T 0.2500" in page and "DINO 0.7500" in page
    assert "warning: no identifier in the prompt" in page and "Not evaluated yet" not in page
    assert "<img src='results/mesh_views.png'" in page  # the rest of the page is kept
    assert not update_eval_section(ctx.out / "nowhere.html", results)
