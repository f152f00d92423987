"""The Gradio page of ``dreambooth3d app``: photos and a prompt in, the run watched live, its results shown.

All the work is in :mod:`.jobs` (Gradio-free); this module lays out the page and turns a job's state
into what each element shows. The element ids (``elem_id``) are the page's interface for the browser
test: photos, class_noun, prompt, preset, method, run, stop, jobs, resume; status, pseudo_views,
turntable, mesh, download, log.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import DreamBooth3DError
from .jobs import FAILED, FINISHED, QUEUED, Job, JobManager

log = logging.getLogger(__name__)
OUTPUTS = ("status", "pseudo_views", "turntable", "mesh", "download", "log")
TICK_S = 1.0


def job_label(job: Job) -> str:
    return f"{job.state} · {job.describe()} · {job.id}"


def job_choices(manager: JobManager) -> List[Tuple[str, str]]:
    return [(job_label(j), j.id) for j in manager.list()]


def status_text(manager: JobManager, job: Job, notes: List[str] = ()) -> str:
    """The status box: the job's state (and queue position), the [n/7] step line and the bar."""
    pos = manager.position(job.id) if job.state == QUEUED else None
    where = f" (position {pos} in the queue)" if pos is not None else ""
    lines = [f"job {job.id}: {job.state}{where} — {job.describe()}"]
    progress = job.progress()
    lines += [x for x in (progress.step, progress.bar) if x]
    if job.message:
        lines.append(job.message)
    if job.state == FINISHED:
        lines.append(f"results: {job.out}")
    return "\n".join(lines + [f"warning: {n}" for n in notes])


def view(manager: JobManager, job: Optional[Job], notes: List[str] = ()) -> Dict[str, Any]:
    """What each output shows for a job (paths are files under the out-root)."""
    if job is None:
        return {k: None for k in OUTPUTS} | {"status": "no job yet: add photos, a class noun and a prompt, then Run",
                                             "log": ""}
    glb, pseudo, video = job.glb(), job.pseudo_views(), job.turntable()
    download = job.download() if job.state == FINISHED else None
    return {"status": status_text(manager, job, notes),
            "pseudo_views": str(pseudo) if pseudo else None,
            "turntable": str(video) if video else None,
            "mesh": str(glb) if glb else None,
            "download": str(download) if download else None,
            "log": job.failure() if job.state == FAILED else ""}


def error_view(message: str) -> Dict[str, Any]:
    first = message.splitlines()[0] if message else "error"
    return {k: None for k in OUTPUTS} | {"status": f"error: {first}", "log": message}


def build(manager: JobManager, default_preset: str = "default") -> "gr.Blocks":  # noqa: F821
    import gradio as gr

    from ..pipeline.context import METHODS
    from ..pipeline.presets import PRESETS

    def diff(new: Dict[str, Any], shown: Dict[str, Any]) -> Tuple[list, Dict[str, Any]]:
        """Only the outputs that changed: a video or a 3D viewer reloads when it is sent again."""
        values = [new[k] if shown.get(k, object()) != new[k] else gr.skip() for k in OUTPUTS]
        return values, dict(new)

    def guarded(fn):
        """Errors in the page, never a traceback: ours show their message, anything else one line."""
        @functools.wraps(fn)
        def wrapper(*args):
            try:
                return fn(*args)
            except DreamBooth3DError as e:
                return ("", *diff(error_view(str(e)), {})[0], {}, gr.skip())
            except Exception as e:  # a bug: one line here, the traceback in the server's log
                log.exception("app handler failed")
                return ("", *diff(error_view(f"unexpected {type(e).__name__}: {e}"), {})[0], {}, gr.skip())
        return wrapper

    with gr.Blocks(title="DreamBooth3D") as page:
        gr.Markdown("## DreamBooth3D — a few photos of a subject and a prompt in, a 3D model out\n"
                    "Name the subject in the prompt as **sks** followed by the class noun, "
                    "e.g. *a sks toy on a table*.")
        current = gr.State("")  # the job the page shows
        shown = gr.State({})  # what the outputs show now (sent again only when it changes)
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label="Photos of the subject (3-6)", file_count="multiple", file_types=["image"],
                                 elem_id="photos")
                class_noun = gr.Textbox(label="Class noun", placeholder="toy", elem_id="class_noun")
                prompt = gr.Textbox(label="Prompt", placeholder="a sks toy on a table", elem_id="prompt")
                with gr.Row():
                    preset = gr.Dropdown(sorted(PRESETS), value=default_preset, label="Preset", elem_id="preset")
                    method = gr.Dropdown(list(METHODS), value=METHODS[0], label="Method", elem_id="method")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                jobs = gr.Dropdown(job_choices(manager), value=None, label="Jobs (finished and unfinished)",
                                   elem_id="jobs")
                resume_btn = gr.Button("Resume the selected job", elem_id="resume")
            with gr.Column(scale=2):
                status = gr.Textbox(label="Status", lines=4, max_lines=8, interactive=False, elem_id="status")
                with gr.Row():
                    pseudo_views = gr.Image(label="Pseudo multi-view images (stage 2)", type="filepath",
                                            interactive=False, elem_id="pseudo_views")
                    turntable = gr.Video(label="Turntable", interactive=False, elem_id="turntable")
                mesh = gr.Model3D(label="Mesh (model.glb): drag to turn it", interactive=False, height=360,
                                  clear_color=(0.85, 0.85, 0.85, 1.0), elem_id="mesh")
                download = gr.File(label="Download results/ and summary.html (zip)", interactive=False,
                                   elem_id="download")
                log_box = gr.Textbox(label="What went wrong", lines=10, max_lines=30, interactive=False,
                                     elem_id="log")
        outputs = [status, pseudo_views, turntable, mesh, download, log_box]

        @guarded
        def on_run(files, noun, text, preset_name, method_name):
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
            job, notes = manager.create([(Path(p).name, p) for p in paths], noun or "", text or "", preset_name,
                                        method_name)
            job = manager.submit(job.id)
            values, now = diff(view(manager, job, notes), {})
            return (job.id, *values, now, gr.update(choices=job_choices(manager), value=job.id))

        @guarded
        def on_resume(job_id):
            if not job_id:
                return ("", *diff(error_view("pick a job in the list first"), {})[0], {}, gr.skip())
            job = manager.submit(job_id)
            values, now = diff(view(manager, job), {})
            return (job.id, *values, now, gr.update(choices=job_choices(manager), value=job.id))

        @guarded
        def on_stop(job_id):
            if not job_id:
                return ("", *diff(error_view("no job to stop"), {})[0], {}, gr.skip())
            job = manager.stop(job_id)
            values, now = diff(view(manager, job), {})
            return (job.id, *values, now, gr.update(choices=job_choices(manager), value=job.id))

        def on_pick(job_id, now):
            if not job_id or job_id not in manager.jobs:
                return (gr.skip(), *[gr.skip()] * len(OUTPUTS), now)
            values, now = diff(view(manager, manager.get(job_id)), {})
            return (job_id, *values, now)

        def on_tick(job_id, now):
            job = manager.jobs.get(job_id) if job_id else None
            if job is None:
                return (*[gr.skip()] * len(OUTPUTS), now, gr.skip())
            values, new = diff(view(manager, job), now)
            choices = job_choices(manager)
            listing = gr.update(choices=choices) if choices != now.get("_jobs") else gr.skip()
            new["_jobs"] = choices
            return (*values, new, listing)

        buttons_out = [current, *outputs, shown, jobs]
        run_btn.click(on_run, [photos, class_noun, prompt, preset, method], buttons_out)
        resume_btn.click(on_resume, [jobs], buttons_out)
        stop_btn.click(on_stop, [current], buttons_out)
        jobs.input(on_pick, [jobs, shown], [current, *outputs, shown])
        gr.Timer(TICK_S).tick(on_tick, [current, shown], [*outputs, shown, jobs], show_progress="hidden")
        page.load(lambda: gr.update(choices=job_choices(manager)), None, [jobs])
    return page
