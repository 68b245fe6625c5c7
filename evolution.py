"""Step 2 of GLoRA, the original project's command (the step itself is ``glora.run.evolution``):

    python evolution.py --dataset DATASET --save_path SAVE_DIR --load_path SUPERNET_SAVE_DIR \
        --param-limits MAX_PARAM_M --rank LORA_RANK

The same command is ``glora-evolution`` once the package is installed.
"""
import sys

from glora.run.evolution import cli

if __name__ == "__main__":
    cli(sys.argv[1:])
