"""speechft: Speech-FT for speech encoders.

Fine-tune a pre-trained speech encoder on a task with stable fine-tuning, merge it back
with its pre-trained weights (weight-space interpolation), and evaluate the merged
encoder frozen on many tasks, SUPERB-style.

Every CLI command is a thin layer over a function here, e.g. ``speechft.encoders.load_encoder``,
``speechft.data.load_task``.
"""

__version__ = "0.1.0"

from .errors import SpeechFTError

__all__ = ["SpeechFTError", "__version__"]
