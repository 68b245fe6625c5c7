"""Step 1 of GLoRA, the original project's command (the step itself is ``glora.run.supernet``):

    python supernet.py --dataset DATASET --lr LR --model 'vit_base_patch16_224_in21k' \
        --save_path SAVE_DIR --rank LORA_RANK

The same command is ``glora-supernet`` once the package is installed.
"""
import sys

from glora.run.supernet import cli

if __name__ == "__main__":
    cli(sys.argv[1:])
