"""The benchmark sweep: a plan (tasks x methods x budgets x seeds x protocols) expanded into calls
of ``supernet.py`` and ``evolution.py``, run locally over GPU slots or CPU processes, or on Slurm
through submitit. Resume and skip live in the CLIs (``--resume auto``); the sweep only calls them.

    python -m glora.sweep configs/vtab.yaml --gpus 0,1 --jobs-per-gpu 3
"""
