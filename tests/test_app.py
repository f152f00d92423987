"""``dreambooth3d app``'s jobs with a fake ``run`` (no threestudio, no Gradio): input hash, queue,
stop of a real process group, resume, restart, progress parsing, failure display."""
from __future__ import annotations

import json
import re
import os
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from threestudio_dreambooth3d.app import jobs as J
from threestudio_dreambooth3d.errors import ConfigError, MachineError, SubjectImageError

ROOT = Path(__file__).resolve().parents[1]
RED_TOY = ROOT / "examples" / "red_toy"

# A stand-in for `dreambooth3d run`: three steps, each recorded in out/manifest.json as run does, a
# step log with a tqdm bar, step 2 waits for out/go (or forever) with a child process in its group.
# MODE=fail fails at step 2 with a traceback. Done steps are skipped on a rerun, as run does.
FAKE_RUN = textwrap.dedent(r'''
    import json, os, subprocess, sys, time
    from pathlib import Path
    out = Path(sys.argv[sys.argv.index("--out") + 1]); mode = os.environ.get("FAKE_MODE", "ok")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    man = out / "manifest.json"
    data = json.loads(man.read_text()) if man.exists() else {"steps": {}}
    def save(): man.write_text(json.dumps(data))
    def result(rel, text="x"):
        p = out / rel; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(text); return rel
    steps = [("finetune", {}), ("stage2", {"contact_sheet": "results/pseudo_views.png"}),
             ("export", {"glb": "results/mesh/model.glb"}), ("summary", {"html": "summary.html"})]
    try:
        for i, (name, outputs) in enumerate(steps, 1):
            if data["steps"].get(name, {}).get("status") == "done":
                print(f"[{i}/4] {name}: skipped (done, inputs unchanged)", flush=True); continue
            print(f"[{i}/4] {name}: the {name} step (not run yet)", flush=True)
            data["steps"][name] = {"status": "running", "outputs": {}}; save()
            with open(out / "logs" / f"{name}.log", "w") as log:
                log.write("Epoch 0:  30%|###       | 3/10 [00:01<00:02, 3.0it/s]\r"); log.flush()
            if name == "stage2":
                if mode == "fail":
                    data["steps"][name]["status"] = "failed"; save()
                    print("Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n    boom()\n"
                          "RuntimeError: the fake step broke", file=sys.stderr, flush=True)
                    sys.exit(2)
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
                (out / "child.pid").write_text(str(child.pid))
                deadline = time.time() + 120  # a broken stop leaves no process behind for long
                while not (out / "go").exists() and time.time() < deadline:
                    time.sleep(0.05)
                child.kill()
            data["steps"][name] = {"status": "done", "outputs": {k: result(v) for k, v in outputs.items()}}; save()
            print(f"[{i}/4] {name}: done in 0s", flush=True)
    except KeyboardInterrupt:
        print("dreambooth3d run: interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)
''')


def fake_argv(script: Path):
    def argv(job):
        return [sys.executable, str(script), "--out", str(job.out)]
    return argv


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    made = []

    def make(root="jobs", mode="ok", slots=(None,), check=lambda preset, root: None):
        m = J.JobManager(tmp_path / root, slots=list(slots), argv_for=fake_argv(script),
                         env={**os.environ, "FAKE_MODE": mode}, check_environment=check, stop_grace=10)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def photos(folder=RED_TOY):
    return [(p.name, p) for p in sorted(folder.iterdir())]


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def new_job(m, prompt="a sks toy on a table"):
    job, _ = m.create(photos(), "toy", prompt, "smoke", "dreambooth3d")
    return job


# -- inputs -----------------------------------------------------------------------------------

def test_safe_name_keeps_only_a_plain_file_name():
    assert J.safe_name("../../etc/passwd.PNG", 0) == "00_passwd.png"
    assert J.safe_name("C:\\Users\\me\\My Dog (1).JPG", 3) == "03_My_Dog_1.jpg"
    assert J.safe_name(".hidden.png", 1) == "01_hidden.png"
    assert J.safe_name("<script>.webp", 2) == "02_script.webp"


def test_same_photos_and_prompt_give_the_same_job(fake, tmp_path):
    m = fake()
    job = new_job(m)
    # the same bytes under other names, in another order: the same job folder
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, p in enumerate(reversed(sorted(RED_TOY.iterdir()))):
        (renamed / f"IMG_{i}.png").write_bytes(p.read_bytes())
    again, _ = m.create(photos(renamed), "toy", " a sks toy on a table ", "smoke", "dreambooth3d")
    assert again.id == job.id and again is job
    other = new_job(m, prompt="a sks toy wearing a hat")
    assert other.id != job.id
    assert sorted(p.name for p in job.subject.iterdir()) == job.photos
    saved = json.loads((job.dir / J.JOB_FILE).read_text())
    assert saved["inputs"]["prompt"] == "a sks toy on a table" and saved["inputs"]["preset"] == "smoke"


def test_bad_photo_is_refused_before_anything_is_stored(fake, tmp_path):
    m = fake()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(SubjectImageError) as e:
        m.create(photos() + [("notes.png", bad)], "toy", "a sks toy", "smoke", "dreambooth3d")
    assert "04_notes.png cannot be read as an image" in str(e.value)
    assert str(m.out_root) not in str(e.value)  # the user's file, not the server's folders
    assert list(m.out_root.iterdir()) == []
    with pytest.raises(ConfigError, match="class noun is empty"):
        m.create(photos(), " ", "a sks toy", "smoke", "dreambooth3d")
    with pytest.raises(ConfigError, match="method must be one of"):
        m.create(photos(), "toy", "a sks toy", "smoke", "dreamfusion")
    _, warnings = m.create(photos(), "toy", "a toy on a table", "smoke", "dreambooth3d")
    assert "does not contain the identifier 'sks'" in warnings[0]


def test_missing_machine_pieces_stop_the_job_before_the_queue(fake):
    m = fake(check=lambda preset, root: "this machine lacks what --preset smoke needs:\nthreestudio  MISSING  ...")
    job = new_job(m)
    with pytest.raises(MachineError, match="threestudio  MISSING"):
        m.submit(job.id)
    assert job.state != J.QUEUED and not m.queue


# -- running ----------------------------------------------------------------------------------

def test_one_job_at_a_time_the_others_queued_in_order(fake):
    m = fake()
    a, b, c = (new_job(m, f"a sks toy number {i}") for i in range(3))
    for job in (a, b, c):
        m.submit(job.id)
    wait_for(lambda: a.state == J.RUNNING and (a.out / "child.pid").exists())
    assert (b.state, m.position(b.id)) == (J.QUEUED, 1)
    assert (c.state, m.position(c.id)) == (J.QUEUED, 2)
    m.submit(b.id)  # already queued: no second entry
    assert list(m.queue) == [b.id, c.id]
    (a.out / "go").touch()
    wait_for(lambda: a.state == J.FINISHED)
    wait_for(lambda: b.state == J.RUNNING)
    assert m.position(c.id) == 1 and not (c.out / "manifest.json").exists()
    m.stop(c.id)  # a queued job just leaves the queue
    assert c.state == J.STOPPED and not m.queue


def test_stop_ends_the_whole_group_and_resume_continues(fake):
    m = fake()
    job = new_job(m)
    m.submit(job.id)
    wait_for(lambda: (job.out / "child.pid").exists())
    run_pid, child = job.pid, int((job.out / "child.pid").read_text())
    m.stop(job.id)
    assert job.state == J.STOPPED and job.exit_code == 130
    assert not J._alive(run_pid) and not J._alive(child)  # the step's own child is gone too
    assert "interrupted" in job.output()
    (job.out / "go").touch()
    m.submit(job.id)  # resume: the finished step is skipped
    wait_for(lambda: job.state == J.FINISHED)
    assert job.attempts == 2
    assert "[1/4] finetune: skipped" in job.output() and "[1/4] finetune: the" not in job.output()
    assert job.glb() == job.out / "results" / "mesh" / "model.glb"
    with zipfile.ZipFile(job.download()) as z:
        assert sorted(z.namelist()) == ["results/mesh/model.glb", "results/pseudo_views.png", "summary.html"]
    m.submit(job.id)  # finished: nothing is rerun
    assert job.state == J.FINISHED and job.attempts == 2


SERVER = textwrap.dedent(r'''
    import sys, time
    from threestudio_dreambooth3d.app import jobs as J
    root, script, job_id = sys.argv[1:4]
    argv = lambda job: [sys.executable, script, "--out", str(job.out)]
    m = J.JobManager(root, slots=[None], argv_for=argv, check_environment=lambda p, r: None)
    m.submit(job_id)
    time.sleep(120)
''')


def test_a_restarted_server_lists_the_job_as_unfinished_and_resumes_it(fake, tmp_path):
    import signal
    import subprocess

    job_id = new_job(fake()).id
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "jobs"), str(tmp_path / "fake_run.py"),
                               job_id])
    try:
        wait_for(lambda: list((tmp_path / "jobs").glob("*/out/child.pid")), timeout=60)
    finally:
        server.send_signal(signal.SIGKILL)  # the server dies without stopping its job
        server.wait()
    folder = next((tmp_path / "jobs").glob("*/out")).parent
    run_pid = json.loads((folder / J.JOB_FILE).read_text())["pid"]
    assert J._alive(run_pid)  # its run outlived it
    m = fake()
    job = m.get(job_id)
    assert folder.name == job_id and job.state == J.UNFINISHED and "Resume" in job.message
    assert not J._alive(run_pid)  # the old server's run was stopped: one run per folder
    assert [j.id for j in m.list()] == [job.id] and job.inputs.prompt == "a sks toy on a table"
    (job.out / "go").touch()
    m.submit(job.id)
    wait_for(lambda: job.state == J.FINISHED)
    assert "[1/4] finetune: skipped" in job.output() and job.glb() is not None


def test_a_failed_step_shows_where_and_why(fake):
    m = fake(mode="fail")
    job = new_job(m)
    m.submit(job.id)
    wait_for(lambda: job.state == J.FAILED)
    text = job.failure()
    assert text.startswith("failed at step stage2 (exit code 2)")
    assert "RuntimeError: the fake step broke" in text and 'File "x.py", line 3, in f' in text
    assert "Traceback" not in text


# -- progress ---------------------------------------------------------------------------------

RUN_OUTPUT = (
    "[1/7] finetune: DreamBooth finetune on the photos (partial + full checkpoints): starting\n"
    "    finetune steps: 1/4\n"
    "[1/7] finetune: done in 12s\n"
    "[2/7] stage1: stage 1: DreamFusion with the partial DreamBooth model: starting (interrupted last time; "
    "restarting cleanly)\n"
    "    training: 0/20\n"
    "    training: 5/20\n"
)


def test_progress_is_the_last_step_line_and_its_bar():
    p = J.read_progress(RUN_OUTPUT)
    assert p.step.startswith("[2/7] stage1: stage 1")
    assert p.bar == "training: [######..................] 5/20 (25%)"
    # the step's own log is newer than run's quarter lines; side bars (validation) do not count
    log = ("Epoch 0:  40%|####      | 8/20 [00:02<00:03, 4.0it/s]\r"
           "Validation DataLoader 0: 100%|##########| 1/1 [00:00<00:00]\r")
    assert J.read_progress(RUN_OUTPUT, log).bar == "training: [#########...............] 8/20 (40%)"
    rich = "Testing ━━━━━━━━━━━━━━━ 3/4 0:00:03 • 0:00:01 1.15it/s"
    assert J.read_progress(RUN_OUTPUT, rich).bar.startswith("rendering views: [") and "3/4" in J.last_bar(rich)
    done = J.read_progress(RUN_OUTPUT + "[2/7] stage1: done in 1m02s\n", log)
    assert done == J.Progress("[2/7] stage1: done in 1m02s", "")
    assert J.read_progress("") == J.Progress()


def test_the_running_job_reads_its_newest_step_log(fake):
    m = fake()
    job = new_job(m)
    m.submit(job.id)
    wait_for(lambda: (job.out / "child.pid").exists())
    p = job.progress()
    assert p.step == "[2/4] stage2: the stage2 step (not run yet)"
    assert p.bar == "training: [#######.................] 3/10 (30%)"
    assert job.pseudo_views() is None  # written when stage 2 has finished
    (job.out / "go").touch()
    wait_for(lambda: job.state == J.FINISHED)
    assert job.pseudo_views() == job.out / "results" / "pseudo_views.png"


def test_a_missing_threestudio_is_doctors_table(tmp_path, monkeypatch):
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path / "no-threestudio"))
    text = J.environment_problem("smoke", tmp_path)
    assert text.startswith("this machine lacks what --preset smoke needs:\n")
    assert re.search(r"^threestudio\s+MISSING\s", text, re.M) and "`dreambooth3d doctor` shows every check" in text
