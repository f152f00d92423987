"""This machine and what the pipeline needs from it: the requirement lists (read by setup.py),
where threestudio is, whether a hub id is usable offline, and ``dreambooth3d doctor``'s checks.
Torch-free; importing this package imports none of its modules."""
