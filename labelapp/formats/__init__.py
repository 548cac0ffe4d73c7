"""File formats: prompt and label files parsed into validated rows before anything is written, streaming exports, prompt templates. Pure parsing on top of rlhf.data (torch-free)."""
