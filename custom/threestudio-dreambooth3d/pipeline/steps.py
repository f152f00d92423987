"""The pipeline's steps, in order, each saying what it depends on, runs and produces.

A step's ``inputs`` (what the manifest fingerprints) are the command it would run, with
the output folder and threestudio's location written as ``$OUT``/``$THREESTUDIO`` so a
moved folder is not "changed", plus hashes of the files the command reads that its text
does not pin down (subject photos, config files). The runner adds the ``output_id`` of
every upstream step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..fs import sha256_files
from .artifacts import MESH_VIEWS, copy_into, latest, mesh_files, obj_to_glb, render_mesh_views
from .commands import Command, finetune_command, launch_command
from .context import RunContext
from ..errors import ConfigError, MissingOutputError

RunCommand = Callable[[Command], None]


def _normalised(cmd: Command, ctx: RunContext) -> List[str]:
    # argv[0] is the interpreter: a new venv is not a new input
    return [ctx.portable(arg) for arg in cmd.argv[1:]]


def _file_hash(path: Path) -> str:
    return sha256_files([path]) if Path(path).is_file() else "missing"


def subject_photos(ctx: RunContext) -> List[Path]:
    from ..core.subject import list_subject_images

    return list_subject_images(ctx.subject)


def _subject_inputs(ctx: RunContext) -> Dict[str, Any]:
    photos = subject_photos(ctx)
    return {"subject_sha256": sha256_files(photos), "subject_files": [p.name for p in photos]}


class Step:
    name: str = ""
    title: str = ""
    upstream: Tuple[str, ...] = ()
    # an interrupted run may continue from its own saved state instead of starting over
    resumable: bool = False
    needs_threestudio: bool = False

    def command(self, ctx: RunContext) -> Optional[Command]:
        return None

    def inputs(self, ctx: RunContext) -> Dict[str, Any]:
        cmd = self.command(ctx)
        return {"command": _normalised(cmd, ctx)} if cmd is not None else {}

    def work_paths(self, ctx: RunContext) -> List[Path]:
        """Everything the step writes; removed before a clean (re)start."""
        return []

    def run(self, ctx: RunContext, run_command: RunCommand) -> Dict[str, Path]:
        """Produce the outputs; returns them by label (each must exist afterwards)."""
        cmd = self.command(ctx)
        run_command(cmd)
        return self.collect(ctx)

    def collect(self, ctx: RunContext) -> Dict[str, Path]:
        return {}


def _expect(path: Path, what: str, step: str, ctx: RunContext) -> Path:
    if not Path(path).exists():
        raise MissingOutputError(f"{step} finished but wrote no {what} at {path}; see {ctx.logs_dir / (step + '.log')}.")
    return Path(path)


class Finetune(Step):
    name, title = "finetune", "DreamBooth finetune on the photos (partial + full checkpoints)"
    resumable = True  # the trainer resumes its own state, after checking it belongs to these inputs

    def command(self, ctx):
        return finetune_command(ctx)

    def inputs(self, ctx):
        return {**super().inputs(ctx), **_subject_inputs(ctx)}

    def work_paths(self, ctx):
        return [ctx.finetune_dir]

    def collect(self, ctx):
        return {name: _expect(ctx.checkpoint(name) / "dreambooth.json", f"{name} checkpoint", self.name, ctx).parent
                for name in ("partial", "full")}


class ThreestudioStage(Step):
    needs_threestudio = True
    video_name: Optional[str] = None  # copy the trial's turntable video to results/ under this name

    def command(self, ctx):
        return launch_command(ctx, self.name)

    def inputs(self, ctx):
        cmd = self.command(ctx)
        config = Path(cmd.argv[cmd.argv.index("--config") + 1])
        return {**super().inputs(ctx), "config_sha256": _file_hash(config)}

    def work_paths(self, ctx):
        paths = [ctx.trial_dir(self.name)]
        return paths + ([ctx.results_dir / self.video_name] if self.video_name else [])

    def _video(self, ctx) -> Dict[str, Path]:
        video = latest(ctx.save_dir(self.name), "test.mp4")
        if video is None or self.video_name is None:
            return {}
        return {"turntable": copy_into(video, ctx.results_dir / self.video_name)}


class NerfStage(ThreestudioStage):
    """A ``--train`` stage: a NeRF checkpoint, its parsed config and a turntable video."""

    def collect(self, ctx):
        return {"checkpoint": _expect(ctx.last_ckpt(self.name), "checkpoint", self.name, ctx),
                "config": _expect(ctx.parsed_config(self.name), "parsed config", self.name, ctx),
                **self._video(ctx)}


class Stage1(NerfStage):
    name, title = "stage1", "stage 1: DreamFusion with the partial DreamBooth model"
    upstream = ("finetune",)
    video_name = "stage1_turntable.mp4"


class Stage2(ThreestudioStage):
    name, title = "stage2", "stage 2: pseudo multi-view images (stage-1 renders translated by the full model)"
    upstream = ("finetune", "stage1")

    def work_paths(self, ctx):
        return super().work_paths(ctx) + [ctx.pseudo_views_dir, ctx.results_dir / "pseudo_views.png"]

    def collect(self, ctx):
        from ..core.pseudo_views import CONTACT_SHEET, read_pseudo_views

        read_pseudo_views(_expect(ctx.pseudo_views_dir, "pseudo-view set", self.name, ctx))  # complete and readable
        sheet = copy_into(ctx.pseudo_views_dir / CONTACT_SHEET, ctx.results_dir / "pseudo_views.png")
        return {"pseudo_views": ctx.pseudo_views_dir, "contact_sheet": sheet}


class MultiviewFinetune(Step):
    name, title = "multiview_finetune", "multi-view DreamBooth: continue the partial model on photos + pseudo views"
    upstream = ("finetune", "stage2")
    resumable = True

    def command(self, ctx):
        return finetune_command(ctx, multiview=True)

    def inputs(self, ctx):
        return {**super().inputs(ctx), **_subject_inputs(ctx)}

    def work_paths(self, ctx):
        return [ctx.multiview_dir]

    def collect(self, ctx):
        ckpt = ctx.checkpoint("multiview")
        return {"multiview": _expect(ckpt / "dreambooth.json", "multiview checkpoint", self.name, ctx).parent}


class Stage3(NerfStage):
    name, title = "stage3", "stage 3: SDS with the multi-view model + pseudo-view reconstruction"
    upstream = ("stage1", "stage2", "multiview_finetune")
    video_name = "stage3_turntable.mp4"


class Baseline(NerfStage):
    """A baseline method's NeRF (``--method dreamboothfusion|latentnerf``): SDS with the full model."""

    name, title = "baseline", "baseline NeRF: SDS with the fully trained DreamBooth model"
    upstream = ("finetune",)
    video_name = "baseline_turntable.mp4"


class Export(ThreestudioStage):
    name, title = "export", "textured mesh export (threestudio mesh-exporter) + GLB"
    upstream = ("stage3",)

    def __init__(self, final: str = "stage3") -> None:
        self.upstream = (final,)  # the NeRF step it exports

    def work_paths(self, ctx):
        return [ctx.trial_dir(self.name), ctx.mesh_dir, ctx.results_dir / MESH_VIEWS]

    def collect(self, ctx):
        export_dir = latest(ctx.save_dir(self.name), "export")
        if export_dir is None:
            raise MissingOutputError(f"export finished but wrote no it*-export folder under {ctx.save_dir(self.name)}; "
                               f"see {ctx.logs_dir / 'export.log'}.")
        files = {p.name: copy_into(p, ctx.mesh_dir / p.name) for p in mesh_files(export_dir)}
        obj = next((p for n, p in files.items() if n.endswith(".obj")), None)
        if obj is None:
            raise MissingOutputError(f"no OBJ in {export_dir}; see {ctx.logs_dir / 'export.log'}.")
        glb = obj.with_suffix(".glb")
        obj_to_glb(obj, glb)
        views = render_mesh_views(obj, ctx.results_dir / MESH_VIEWS)  # the summary shows the mesh, not only links
        return {**{f"mesh:{n}": p for n, p in files.items()}, "glb": glb, "mesh_views": views}


class Summary(Step):
    name, title = "summary", "summary page"
    upstream = ("finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export")

    def inputs(self, ctx):
        return {"prompt": ctx.prompt}

    def work_paths(self, ctx):
        return [ctx.out / "summary.html", ctx.out / "SUMMARY.md", ctx.results_dir / "subject"]

    def run(self, ctx, run_command):
        from .manifest import Manifest
        from .summary import write_summary

        return write_summary(ctx, Manifest(ctx.out), subject_photos(ctx))


STEPS: List[Step] = [Finetune(), Stage1(), Stage2(), MultiviewFinetune(), Stage3(), Export(), Summary()]
STEP_NAMES = [s.name for s in STEPS]


def steps_for(method: str) -> List[Step]:
    """The steps a method runs; a baseline skips stages 1-3 and the multi-view finetune."""
    if method == "dreambooth3d":
        return list(STEPS)
    summary = Summary()
    summary.upstream = ("finetune", "baseline", "export")
    return [Finetune(), Baseline(), Export(final="baseline"), summary]
ALIASES = {"multiview": "multiview_finetune", "mesh": "export"}


def step_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in STEP_NAMES + ["baseline"]:  # "baseline": the NeRF step of --method dreamboothfusion/latentnerf
        raise ConfigError(f"unknown step {name!r}; steps are {', '.join(STEP_NAMES)} (baseline methods: baseline)")
    return name
