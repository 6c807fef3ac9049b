"""nanogpt_chars: a character-level GPT trained by steps with torchexp. Run `python -m nanogpt_chars --help`."""
