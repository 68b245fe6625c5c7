"""Exports of a searched GLoRA model: a plain timm folder (``timm_folder``), and PEFT adapters
(``peft_map``: the exact option mapping onto PEFT's GLoRA layer; ``peft``: writing the adapters)."""
