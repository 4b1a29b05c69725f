"""Task folders, their manifests, audio loading and batching."""

from .audio import SAMPLE_RATE, load_audio
from .batching import BucketBatchSampler, collate_waveforms, padded_fraction
from .tasks import Example, Task, load_task, write_task_folder

__all__ = [
    "SAMPLE_RATE",
    "load_audio",
    "BucketBatchSampler",
    "collate_waveforms",
    "padded_fraction",
    "Example",
    "Task",
    "load_task",
    "write_task_folder",
]
