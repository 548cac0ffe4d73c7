"""The RLHF studio's ML library: data formats, model loading, sampling, SFT, reward model, DPO.

Runs on its own (never imports Django): ``python -m rlhf <sample|sft|reward|dpo> --config FILE``.
The Celery workers call the same entry points:

    from rlhf import Cancelled
    from rlhf.sft import SFTRunConfig, train_sft
    artifacts = train_sft(SFTRunConfig(output_dir=..., model=...), demonstrations, progress=report)

``progress(step, total, metrics)`` is called after every optimizer step; raising ``rlhf.Cancelled``
from it stops the run cleanly (checkpoint saved, metadata status ``cancelled``). See docs/RLHF.md.
Heavy modules (torch, transformers, trl) load only when a submodule is imported.
"""

from .contract import Artifacts, Cancelled, ProgressCallback, TrainerConfig, load_config

__all__ = ["Artifacts", "Cancelled", "ProgressCallback", "TrainerConfig", "load_config"]
