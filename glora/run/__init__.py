"""The two steps and their plumbing: ``supernet`` (step 1) and ``evolution`` (step 2), each a whole
command (``get_args_parser``, ``main``, ``cli``), ``export_peft``, and what they share: flags and
YAML (``config``; ``yaml_files`` reads every YAML file, bounding what its aliases expand to),
up-front checks (``preflight``), building the backbone (``backbone``),
checkpoints, the training and evaluation loops (``engine``), ``compile`` and ``distributed``.
This is the only part of ``glora`` that reads argparse namespaces or imports ``vtab``."""
