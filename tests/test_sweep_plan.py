"""Planning a sweep: one cell per subject x prompt x method, seeds from the cell's key, what counts as finished."""
from __future__ import annotations

from pathlib import Path

from threestudio_dreambooth3d.sweep.cell import write_record
from threestudio_dreambooth3d.sweep.plan import DONE, FAILED, SweepOptions, cell_seed, is_finished, plan_cells, write_prompt_sets

from fakes import plan_sweep, sweep_subjects


def test_each_cell_pins_a_seed_from_its_key_not_its_position(tmp_path):
    cells = plan_sweep(tmp_path)
    assert len(cells) == 2 * 2 * 2
    seeds = {c.key: c.seed for c in cells}
    assert len(set(seeds.values())) == len(cells)
    # other subjects/methods/orders around it do not change a cell's seed
    alone = plan_sweep(tmp_path, subjects=list(reversed(sweep_subjects(tmp_path)))[:1], methods=("latentnerf",))
    assert all(seeds[c.key] == c.seed for c in alone)
    assert cells[0].seed == cell_seed(0, "dog", "a sks dog", "dreambooth3d")
    # the seed reaches the run, and the base seed changes every cell's
    assert cells[0].run_argv[cells[0].run_argv.index("--seed") + 1] == str(cells[0].seed)
    assert all(c.seed != seeds[c.key] for c in plan_sweep(tmp_path, seed=1))


def test_cell_commands_are_run_and_eval_of_one_folder(tmp_path):
    bear = next(c for c in plan_sweep(tmp_path, clip_models=["m1", "m2"]) if c.subject == "bear" and c.method == "latentnerf")
    r, e = bear.run_argv, bear.eval_argv
    assert r[1:4] == ["-m", "threestudio_dreambooth3d.cli", "run"] and e[3] == "eval"
    assert r[r.index("--class-noun") + 1] == "stuffed animal"  # one argument, not two
    assert r[r.index("--prompt") + 1] == "a sks stuffed animal" == e[e.index("--prompt") + 1]
    assert r[r.index("--method") + 1] == "latentnerf" and r[r.index("--preset") + 1] == "smoke"
    assert r[r.index("--out") + 1] == e[e.index("--run") + 1] == bear.out
    assert e[e.index("--clip-models") + 1: e.index("--clip-models") + 3] == ["m1", "m2"]
    assert e[e.index("--class-noun") + 1] == "stuffed animal"
    # R-precision retrieves among the subject's prompts: the sweep's, then the dataset's list for its class
    prompt_file = Path(e[e.index("--prompts") + 1])
    assert prompt_file == (tmp_path / "sweep" / "prompts" / "bear.txt").resolve()
    assert Path(bear.out).relative_to((tmp_path / "sweep").resolve()).parts == ("cells", "bear", "a-sks-stuffed-animal",
                                                                               "latentnerf")


def test_prompt_sets_are_written_per_subject_and_part_of_every_cells_inputs(tmp_path):
    opts = SweepOptions(out=tmp_path / "s")
    subjects = sweep_subjects(tmp_path)[:1]  # dog
    one = {"dog": ["a {identifier} {class} wearing a hat"]}
    write_prompt_sets(opts, subjects, one)
    lines = (tmp_path / "s" / "prompts" / "dog.txt").read_text().splitlines()
    assert lines[0] == "a sks dog wearing a hat" and "a sks dog in a chef outfit" in lines  # live list: a dog
    assert len(lines) == len(set(lines)) == 26
    # adding a prompt for the subject changes the retrieval set of its other cells: they are not finished
    before = plan_cells(opts, subjects, one, ["dreambooth3d"], {})[0]
    after = plan_cells(opts, subjects, {"dog": one["dog"] + ["a {identifier} {class} on the moon"]},
                       ["dreambooth3d"], {})[0]
    assert before.key == after.key and before.eval_argv == after.eval_argv
    assert before.fingerprint != after.fingerprint


def test_finished_means_done_for_the_same_inputs_with_scores(tmp_path):
    cell = plan_sweep(tmp_path)[0]
    assert not is_finished(cell)
    write_record(cell, {"status": DONE, "fingerprint": cell.fingerprint})
    assert not is_finished(cell)  # no eval.json yet
    cell.eval_json.parent.mkdir(parents=True)
    cell.eval_json.write_text("{}")
    assert is_finished(cell)
    write_record(cell, {"status": FAILED, "fingerprint": cell.fingerprint})
    assert not is_finished(cell)
    write_record(cell, {"status": DONE, "fingerprint": cell.fingerprint})
    changed = plan_sweep(tmp_path, overrides=["stage1:trainer.max_steps=3"])[0]
    assert changed.key == cell.key and not is_finished(changed)
