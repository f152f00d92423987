"""``dreambooth3d run``: the DreamBooth3D pipeline as resumable steps.

finetune (partial + full DreamBooth) -> stage1 -> stage2 (pseudo views) -> multiview_finetune
-> stage3 -> export (mesh + GLB) -> summary. Stages run through threestudio's launch.py
(:mod:`.commands`); :mod:`.manifest` records what finished with which inputs so a rerun
skips it (:mod:`.runner`); :mod:`.presets` holds the real and the CPU smoke settings;
:mod:`.context` fixes the output folder's layout.
"""
