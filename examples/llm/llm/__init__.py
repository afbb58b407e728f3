"""flsplit llm: LoRA adapters of a small GPT-2 trained by split learning on synthetic text."""
