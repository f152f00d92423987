"""``dreambooth3d sweep``: subjects x prompts x methods, each cell one ``run`` + ``eval``.

- ``dataset``: subjects and prompt templates, from the DreamBooth dataset layout
  (``<subject>/*.jpg`` + ``prompts_and_classes.txt``) or from folders with class nouns;
- ``plan``: the cells, each with its own seed (from its key, not from scheduling order),
  its output folder and the two commands it runs; whether a cell is finished;
- ``cell``: the function one cell runs (on this machine or on a cluster node);
- ``executors``: where cells run: one per visible GPU here, or through submitit (Slurm);
- ``report``: the paper's Table 1 (mean +- std over subjects), per-subject CSV/JSON, an
  HTML page of turntable frames, and the progress line.

Import-light (no torch) so ``dreambooth3d --help`` stays fast.
"""
