"""The pipeline's steps, in order, each saying what it depends on, runs and produces.

Each :class:`Step` owns everything about itself: its command (for a threestudio stage:
the config file, launch.py mode and dotlist), its overrides (the preset's, then the
user's ``--set STEP:KEY=VALUE``), what it writes and what it must have produced.

A step's ``inputs`` (what the manifest fingerprints) are the command it would run, with
the output folder and threestudio's location written as ``$OUT``/``$THREESTUDIO`` so a
moved folder is not "changed", plus hashes of the files the command reads that its text
does not pin down (subject photos, config files). The runner adds the ``output_id`` of
every upstream step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..finetune_options import FinetuneOptions, continuation_args
from ..fs import sha256_files
from .artifacts import MESH_VIEWS, copy_into, latest, mesh_files, obj_to_glb, render_mesh_views, turntable_preview
from .commands import KEYS, Command, LaunchMode, dot, finetune_cli, launch_py
from .context import RunContext, round_step, split_round
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
    round: int = 1  # the bootstrapping round of a repeated step (stage 2, multi-view finetune, stage 3)
    upstream: Tuple[str, ...] = ()
    # an interrupted run may continue from its own saved state instead of starting over
    resumable: bool = False
    needs_threestudio: bool = False
    # outputs fingerprinted when the step finishes and checked before it is skipped
    check_outputs: bool = True

    def command(self, ctx: RunContext) -> Optional[Command]:
        return None

    @property
    def base(self) -> str:
        """The step's name without its round: ``stage3_r2`` is a ``stage3``."""
        return split_round(self.name)[0] if self.round > 1 else self.name

    def preset_overrides(self, ctx: RunContext) -> List[str]:
        return list(ctx.preset.overrides.get(self.base, []))

    def overrides(self, ctx: RunContext) -> List[str]:
        """The preset's overrides for this step, then the user's (``--set``), so the user's win.
        A later round's step takes its kind's (``--set stage3:...``), then its own (``--set stage3_r2:...``)."""
        names = [self.base] + ([self.name] if self.name != self.base else [])
        return self.preset_overrides(ctx) + [o for n in names for o in ctx.overrides.get(n, [])]

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
    """``dreambooth3d finetune`` on the photos: partial + full checkpoints from one run."""

    name, title = "finetune", "DreamBooth finetune on the photos (partial + full checkpoints)"
    resumable = True  # the trainer resumes its own state, after checking it belongs to these inputs
    checkpoint_names: Tuple[str, ...] = ("partial", "full")

    def out_dir(self, ctx: RunContext) -> Path:
        return ctx.finetune_dir

    def run_args(self, ctx: RunContext) -> List[str]:
        """Options that differ between the photo run and the multi-view continuation."""
        p = ctx.preset
        return ["--out", str(self.out_dir(ctx)), "--steps", str(p.finetune_steps),
                "--checkpoints", f"partial={p.partial_step},full={p.finetune_steps}"]

    def overrides(self, ctx):
        # the preset's finetune options (both finetune steps), then the user's for this step
        return list(ctx.preset.finetune_args) + super().overrides(ctx)

    def command(self, ctx):
        p = ctx.preset
        args = ["--subject", str(ctx.subject), "--class-noun", ctx.class_noun, "--model", ctx.model,
                "--identifier", ctx.identifier, "--num-class-images", str(p.num_class_images),
                "--class-images-dir", str(ctx.class_images_dir), "--seed", str(ctx.seed)]
        args += self.run_args(ctx) + (["--device", "cpu"] if p.cpu else []) + self.overrides(ctx)
        return finetune_cli(ctx, args, log_name=self.name)

    def inputs(self, ctx):
        return {**super().inputs(ctx), **_subject_inputs(ctx)}

    def work_paths(self, ctx):
        return [self.out_dir(ctx)]

    def collect(self, ctx):
        return {name: _expect(ctx.checkpoint(name) / "dreambooth.json", f"{name} checkpoint", self.name, ctx).parent
                for name in self.checkpoint_names}


def first_finetune_options(ctx: RunContext) -> FinetuneOptions:
    """The options the first finetune runs with: its command line, the preset's and the user's
    options included."""
    return FinetuneOptions.parse(Finetune().command(ctx).argv[4:])  # after "python -m threestudio_dreambooth3d.cli finetune"


class ThreestudioStage(Step):
    """A step that runs threestudio's launch.py: its config in ``mode``, with :meth:`dotlist`
    then the overrides."""

    needs_threestudio = True
    mode: LaunchMode = "--train"
    video_name: Optional[str] = None  # copy the trial's turntable video to results/ under this name

    def config(self, ctx: RunContext) -> Path:
        """The config file: the method's file for this step under the configs folder."""
        assert ctx.configs_dir is not None
        return ctx.configs_dir / ctx.stage_config(self.base)

    def model(self, ctx: RunContext) -> str:
        """The guidance's base model: the run's Stable Diffusion (the MVDream folder for its stages)."""
        return ctx.model

    def dotlist(self, ctx: RunContext) -> List[str]:
        """Our config keys for this step: the base model, the prompt, the DreamBooth checkpoint..."""
        return [dot(KEYS["model"], self.model(ctx)), dot(KEYS["prompt"], ctx.prompt)]

    def command(self, ctx):
        return launch_py(ctx, self.name, self.config(ctx), self.mode, self.dotlist(ctx) + self.overrides(ctx))

    def inputs(self, ctx):
        return {**super().inputs(ctx), "config_sha256": _file_hash(self.config(ctx))}

    def work_paths(self, ctx):
        paths = [ctx.trial_dir(self.name)]
        return paths + ([ctx.results_dir / self.video_name, ctx.results_dir / Path(self.video_name).with_suffix(".gif")]
                        if self.video_name else [])

    def _video(self, ctx) -> Dict[str, Path]:
        video = latest(ctx.save_dir(self.name), "test.mp4")
        if video is None or self.video_name is None:
            return {}
        out = {"turntable": copy_into(video, ctx.results_dir / self.video_name)}
        frames = latest(ctx.save_dir(self.name), "test")
        preview = turntable_preview(frames, ctx.results_dir / Path(self.video_name).with_suffix(".gif")) if frames else None
        return {**out, "turntable_preview": preview} if preview else out


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

    def dotlist(self, ctx):
        return super().dotlist(ctx) + [dot(KEYS["checkpoint"], ctx.checkpoint("partial"))]


def _in_round(step: Step, base: str, round: int, title: str) -> None:
    if round < 1:
        raise ConfigError(f"round must be >= 1, not {round}")
    step.round, step.name = round, round_step(base, round)
    step.title = title + (f" (round {round})" if round > 1 else "")


class Stage2(ThreestudioStage):
    """Pseudo views: renders of the stage-1 NeRF (round 1) or of the previous round's stage-3
    NeRF (``run --rounds``), translated by the fully trained DreamBooth model."""

    mode = "--test"  # from a NeRF checkpoint, translating renders from random viewpoints with the full model

    def __init__(self, round: int = 1) -> None:
        _in_round(self, "stage2", round, "stage 2: pseudo multi-view images (NeRF renders translated by the full model)")
        self.upstream = ("finetune", self.source_nerf)

    @property
    def source_nerf(self) -> str:
        """The NeRF step whose renders are translated."""
        return "stage1" if self.round == 1 else round_step("stage3", self.round - 1)

    def dotlist(self, ctx):
        return super().dotlist(ctx) + [dot(KEYS["checkpoint"], ctx.checkpoint("full")),
                                       dot("resume", ctx.last_ckpt(self.source_nerf)),
                                       dot(KEYS["pseudo_views_out"], ctx.pseudo_views_for(self.round)),
                                       dot(KEYS["translation_prompt"], ctx.instance_prompt)]

    def contact_sheet(self, ctx) -> Path:
        return ctx.results_dir / f"{round_step('pseudo_views', self.round)}.png"

    def work_paths(self, ctx):
        return super().work_paths(ctx) + [ctx.pseudo_views_for(self.round), self.contact_sheet(ctx)]

    def collect(self, ctx):
        from ..core.pseudo_views import CONTACT_SHEET, read_pseudo_views

        folder = ctx.pseudo_views_for(self.round)
        read_pseudo_views(_expect(folder, "pseudo-view set", self.name, ctx))  # complete and readable
        sheet = copy_into(folder / CONTACT_SHEET, self.contact_sheet(ctx))
        return {"pseudo_views": folder, "contact_sheet": sheet}


class MultiviewFinetune(Finetune):
    """The multi-view DreamBooth: continues the first run's checkpoint (run --multiview-init) on
    the photos plus the captioned pseudo views, training what the first run trained. A later
    round continues the previous round's multi-view checkpoint on that round's pseudo views."""

    checkpoint_names = ("multiview",)

    def __init__(self, round: int = 1) -> None:
        _in_round(self, "multiview_finetune", round,
                  "multi-view DreamBooth: continue the partial model on photos + pseudo views")
        self.upstream = ("finetune", round_step("stage2", round)) + (
            (round_step("multiview_finetune", round - 1),) if round > 1 else ())

    def out_dir(self, ctx):
        return ctx.out / self.name

    def init_checkpoint(self, ctx) -> Path:
        return ctx.checkpoint(ctx.multiview_init) if self.round == 1 else ctx.checkpoint("multiview", self.round - 1)

    def run_args(self, ctx):
        p = ctx.preset
        return ["--out", str(self.out_dir(ctx)), "--steps", str(p.multiview_steps),
                "--checkpoints", f"multiview={p.multiview_steps}",
                "--init-checkpoint", str(self.init_checkpoint(ctx)),
                "--extra-images", str(ctx.pseudo_views_for(self.round) / "images")] + continuation_args(first_finetune_options(ctx))

    def collect(self, ctx):
        return {"multiview": _expect(ctx.checkpoint("multiview", self.round) / "dreambooth.json",
                                     "multiview checkpoint", self.name, ctx).parent}


class Stage3(NerfStage):
    """Round 1 starts from the stage-1 weights; a later round from the previous round's stage 3."""

    def __init__(self, round: int = 1) -> None:
        _in_round(self, "stage3", round, "stage 3: SDS with the multi-view model + pseudo-view reconstruction")
        self.video_name = f"{self.name}_turntable.mp4"
        self.upstream = (self.init_nerf, round_step("stage2", round), round_step("multiview_finetune", round))

    @property
    def init_nerf(self) -> str:
        return "stage1" if self.round == 1 else round_step("stage3", self.round - 1)

    def dotlist(self, ctx):
        return super().dotlist(ctx) + [dot(KEYS["checkpoint"], ctx.checkpoint("multiview", self.round)),
                                       dot(KEYS["pseudo_views_in"], ctx.pseudo_views_for(self.round)),
                                       dot(KEYS["init_weights"], ctx.last_ckpt(self.init_nerf))]


class Baseline(NerfStage):
    """A baseline method's NeRF (``--method dreamboothfusion|latentnerf``): SDS with the full model."""

    name, title = "baseline", "baseline NeRF: SDS with the fully trained DreamBooth model"
    upstream = ("finetune",)
    video_name = "baseline_turntable.mp4"

    def dotlist(self, ctx):
        return super().dotlist(ctx) + [dot(KEYS["checkpoint"], ctx.checkpoint("full"))]

    def overrides(self, ctx):
        # the preset's entry for the method (Latent-NeRF renders latents at its own size), else for
        # any baseline, else stage 1's: a baseline NeRF is scaled like stage 1
        p = ctx.preset
        preset = p.overrides.get(ctx.method, p.overrides.get(self.name, p.overrides.get("stage1", [])))
        return list(preset) + list(ctx.overrides.get(self.name, []))


class Export(ThreestudioStage):
    name, title = "export", "textured mesh export (threestudio mesh-exporter) + GLB"
    upstream = ("stage3",)

    mode = "--export"

    def __init__(self, final: str = "stage3") -> None:
        self.upstream = (final,)  # the NeRF step it exports

    def config(self, ctx):
        # threestudio's own idiom: the trial's parsed config + resume= its checkpoint
        return ctx.parsed_config(ctx.final_nerf_step)

    def dotlist(self, ctx):
        ckpt = ctx.last_ckpt(ctx.final_nerf_step)
        if ctx.method == "latentnerf":
            # its NeRF holds SD latents: export through Latent-NeRF's latent->RGB adapter
            # (materials/latent_rgb_material.py); system.weights, not resume, because the
            # checkpoint has no weights for that material
            load = [dot("system.weights", ckpt), "system.material_type=latent-rgb-material"]
        else:
            load = [dot("resume", ckpt)]
        # nvdiffrast's CUDA context: the default OpenGL one needs EGL, missing on most headless GPU
        # servers, and would fail only after hours of training; cpu/nvdiffrast.py serves it on a CPU.
        # Also set here (not only in the configs) for parsed configs of runs started before the key
        return load + ["system.exporter_type=mesh-exporter", "system.exporter.context_type=cuda"]

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
    check_outputs = False  # `dreambooth3d eval --run OUT` edits summary.html in place
    upstream = ("finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export")

    def __init__(self, upstream: Optional[Tuple[str, ...]] = None) -> None:
        if upstream is not None:
            self.upstream = tuple(upstream)

    def inputs(self, ctx):
        return {"prompt": ctx.prompt}

    def work_paths(self, ctx):
        return [ctx.out / "summary.html", ctx.out / "SUMMARY.md", ctx.results_dir / "subject"]

    def run(self, ctx, run_command):
        from .manifest import Manifest
        from .summary import write_summary

        return write_summary(ctx, Manifest(ctx.out), subject_photos(ctx))


# -- --prior mvdream: MVDream's multi-view model, personalised, in stages 1 and 3 ---------------

class MVDreamModel(Step):
    """The MVDream folder the multi-view steps load. ``--mvdream FOLDER`` is used as it is; a
    released checkpoint (``--mvdream FILE``, or the hub's MVDream/MVDream file when none is given)
    is converted once with ``dreambooth3d convert-mvdream`` (VAE, text encoder, tokenizer and
    scheduler from the run's ``--model``, an SD 2.1 base) into ``OUT/models/mvdream``."""

    name, title = "mvdream_model", "MVDream model folder (convert-mvdream of the released checkpoint)"

    def checkpoint_file(self, ctx: RunContext, download: bool = False) -> Optional[str]:
        """The checkpoint file to convert: the user's, or the hub's (from the HF cache; fetched
        there first when ``download``)."""
        source = ctx.mvdream_source
        if source is None or Path(source).is_file() or ":" not in source:
            return source
        from ..environment.hub import cached_file

        repo, _, filename = source.partition(":")
        hit = cached_file(repo, filename)
        if hit is None and download:
            from huggingface_hub import hf_hub_download

            hit = hf_hub_download(repo, filename)
        return hit or source

    def command(self, ctx, download: bool = False):
        source = self.checkpoint_file(ctx, download)
        if source is None:
            return None
        return finetune_cli(ctx, [source, "--base", ctx.model, "--out", str(ctx.mvdream_model)], log_name=self.name,
                            subcommand="convert-mvdream")

    def inputs(self, ctx):
        # what is converted, not where the HF cache keeps it
        return {"mvdream": ctx.portable(ctx.mvdream_source or str(ctx.mvdream_model)), "base": ctx.portable(ctx.model)}

    def work_paths(self, ctx):
        return [ctx.mvdream_model] if ctx.mvdream_source else []  # never the user's own folder

    def run(self, ctx, run_command):
        cmd = self.command(ctx, download=True)
        if cmd is not None:
            run_command(cmd)
        return self.collect(ctx)

    def collect(self, ctx):
        from ..core.mvdream import is_mvdream_folder

        if not is_mvdream_folder(ctx.mvdream_model):
            raise MissingOutputError(f"{ctx.mvdream_model} is not an MVDream model folder (no unet/config.json naming "
                                     "MultiViewUNet): pass --mvdream a folder written by `dreambooth3d convert-mvdream` "
                                     f"or the released checkpoint file; see {ctx.logs_dir / (self.name + '.log')}.")
        inside = ctx.out in ctx.mvdream_model.parents
        return {"mvdream": ctx.mvdream_model} if inside else {}


def _on_mvdream(cmd: Command, ctx: RunContext) -> Command:
    """A finetune command made MVDreamBooth's: ``--base-model mvdream`` on the MVDream folder, with
    its own (multi-view) class sets."""
    argv = list(cmd.argv)
    argv[argv.index("--model") + 1] = str(ctx.mvdream_model)
    argv[argv.index("--class-images-dir") + 1] = str(ctx.mv_class_images_dir)
    i = argv.index("finetune") + 1
    cmd.argv = argv[:i] + ["--base-model", "mvdream"] + argv[i:]
    return cmd


class MVFinetune(Finetune):
    """MVDreamBooth on the photos (``finetune --base-model mvdream``): the partial multi-view model for
    stage 1 (and the full one when the multi-view continuation starts from it)."""

    name, title = "mv_finetune", "multi-view DreamBooth (MVDream) on the photos (partial checkpoint)"
    upstream = ("mvdream_model",)

    def out_dir(self, ctx):
        return ctx.mv_finetune_dir

    def names(self, ctx) -> Tuple[str, ...]:
        return ("partial", "full") if ctx.multiview_init == "full" else ("partial",)

    def run_args(self, ctx):
        p = ctx.preset
        steps = p.finetune_steps if ctx.multiview_init == "full" else p.partial_step
        marks = ",".join(f"{n}={p.partial_step if n == 'partial' else p.finetune_steps}" for n in self.names(ctx))
        return ["--out", str(self.out_dir(ctx)), "--steps", str(steps), "--checkpoints", marks]

    def command(self, ctx):
        return _on_mvdream(super().command(ctx), ctx)

    def collect(self, ctx):
        return {name: _expect(ctx.mv_checkpoint(name) / "dreambooth.json", f"{name} checkpoint", self.name, ctx).parent
                for name in self.names(ctx)}


class MVMultiviewFinetune(MultiviewFinetune):
    """The multi-view DreamBooth continued on the pseudo views, for MVDream: round 1 continues the
    MVDreamBooth checkpoint (``--multiview-init``), a later round the previous round's; it trains on
    the photos (single views) plus that round's pseudo views as 4-view sets at their own cameras
    (``--extra-views``)."""

    def __init__(self, round: int = 1) -> None:
        super().__init__(round)
        self.title = ("multi-view DreamBooth (MVDream): continue on photos + pseudo views as 4-view sets"
                      + (f" (round {round})" if round > 1 else ""))
        self.upstream = tuple("mv_finetune" if u == "finetune" else u for u in self.upstream)

    def init_checkpoint(self, ctx):
        return ctx.mv_checkpoint(ctx.multiview_init) if self.round == 1 else super().init_checkpoint(ctx)

    def run_args(self, ctx):
        p = ctx.preset
        first = FinetuneOptions.parse(MVFinetune().command(ctx).argv[4:])
        return ["--out", str(self.out_dir(ctx)), "--steps", str(p.multiview_steps),
                "--checkpoints", f"multiview={p.multiview_steps}",
                "--init-checkpoint", str(self.init_checkpoint(ctx)),
                "--extra-views", str(ctx.pseudo_views_for(self.round))] + continuation_args(first)

    def command(self, ctx):
        return _on_mvdream(super().command(ctx), ctx)


class _MVStage:
    """A NeRF stage on the MVDream model: its own config (context.MVDREAM_CONFIGS), the MVDream
    folder as the guidance's model, the preset's ``mvdream`` overrides after the stage's."""

    def model(self, ctx):
        return str(ctx.mvdream_model)

    def preset_overrides(self, ctx):
        return super().preset_overrides(ctx) + list(ctx.preset.overrides.get("mvdream", []))


class MVStage1(_MVStage, Stage1):
    title = "stage 1: multi-view SDS (MVDream) with the partial multi-view DreamBooth"
    upstream = ("mv_finetune",)

    def dotlist(self, ctx):
        return ThreestudioStage.dotlist(self, ctx) + [dot(KEYS["checkpoint"], ctx.mv_checkpoint("partial"))]


class MVStage3(_MVStage, Stage3):
    def __init__(self, round: int = 1) -> None:
        super().__init__(round)
        self.title = ("stage 3: multi-view SDS (MVDream) with the multi-view model + pseudo-view reconstruction"
                      + (f" (round {round})" if round > 1 else ""))


def round_steps(round: int, prior: str = "sd") -> List[Step]:
    """One bootstrapping round: stage 2 -> multi-view finetune -> stage 3 (stage 2 translates with
    the 2D full model under either prior)."""
    if prior == "mvdream":
        return [Stage2(round), MVMultiviewFinetune(round), MVStage3(round)]
    return [Stage2(round), MultiviewFinetune(round), Stage3(round)]


def dreambooth3d_steps(rounds: int = 1, prior: str = "sd") -> List[Step]:
    """DreamBooth3D's steps; ``rounds`` > 1 repeats stage 2 -> multi-view finetune -> stage 3, each
    round from the previous round's final NeRF, and exports the last round's. The MVDream prior
    adds the MVDream folder and its DreamBooth on the photos, and runs stage 1, the multi-view
    finetunes and stage 3 on it."""
    repeated = [s for r in range(1, rounds + 1) for s in round_steps(r, prior)]
    final = round_step("stage3", rounds)
    first = [Finetune(), MVDreamModel(), MVFinetune(), MVStage1()] if prior == "mvdream" else [Finetune(), Stage1()]
    steps = [*first, *repeated, Export(final=final)]
    return steps + [Summary(tuple(s.name for s in steps))]


STEPS: List[Step] = dreambooth3d_steps(1)
MVDREAM_STEPS: List[Step] = dreambooth3d_steps(1, "mvdream")
STEP_NAMES = [s.name for s in STEPS]
MVDREAM_STEP_NAMES = [s.name for s in MVDREAM_STEPS if s.name not in STEP_NAMES]


def stage_configs(ctx: RunContext) -> List[Path]:
    """The config files the method's threestudio steps load (the export loads a NeRF step's parsed config)."""
    return [s.config(ctx) for s in steps_for(ctx.method, ctx.rounds, ctx.prior)
            if isinstance(s, ThreestudioStage) and not isinstance(s, Export)]


def get_step(name: str, method: str = "dreambooth3d", prior: str = "sd") -> Step:
    """The step called ``name`` (aliases allowed) as ``method`` with ``prior`` runs it."""
    name = step_name(name)
    rounds = split_round(name)[1]
    return next(s for s in steps_for(method, rounds, prior) + STEPS + MVDREAM_STEPS if s.name == name)


def steps_for(method: str, rounds: int = 1, prior: str = "sd") -> List[Step]:
    """The steps a method runs; a baseline skips stages 1-3 and the multi-view finetune."""
    if method == "dreambooth3d":
        return dreambooth3d_steps(rounds, prior)
    return [Finetune(), Baseline(), Export(final="baseline"), Summary(("finetune", "baseline", "export"))]


ALIASES = {"multiview": "multiview_finetune", "mesh": "export"}


REPEATED = ("stage2", "multiview_finetune", "stage3")  # the steps `run --rounds` repeats


def step_name(name: str) -> str:
    """A step's name from what a user typed (aliases; ``stage3_r2`` for round 2 of ``--rounds``)."""
    base, round = split_round(name)
    base = ALIASES.get(base, base)
    if round > 1 and base in REPEATED:
        return round_step(base, round)
    name = ALIASES.get(name, name)
    # "baseline": the NeRF step of --method dreamboothfusion/latentnerf; mvdream_model, mv_finetune: --prior mvdream
    if name not in STEP_NAMES + ["baseline"] + MVDREAM_STEP_NAMES:
        raise ConfigError(f"unknown step {name!r}; steps are {', '.join(STEP_NAMES)} (baseline methods: baseline; "
                          f"--prior mvdream: {', '.join(MVDREAM_STEP_NAMES)}; "
                          f"later rounds of --rounds: {', '.join(r + '_r2' for r in REPEATED)}, ...)")
    return name
