"""instructvla: vision-language-action instruction tuning (InstructVLA) for research robots."""

__version__ = "0.1.0"
