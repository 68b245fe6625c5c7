"""The two steps and their plumbing: ``supernet`` (step 1) and ``evolution`` (step 2), each a whole
command (``get_args_parser``, ``main``, ``cli``), ``export_peft``, and what they share: flags and
YAML (``config``; every YAML file is read by ``yaml_files``, which refuses aliases), up-front checks (``preflight``), building the backbone (``backbone``),
checkpoints, the training and evaluation loops (``engine``), ``compile`` and ``distributed``.
This is the only part of ``glora`` that reads argparse namespaces or imports ``vtab``."""
