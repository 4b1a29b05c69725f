"""What trains in an encoder during fine-tuning, and snapshots of it.

The front end, the pre-training-only parameters and a family's constants never train (`freeze_permanently`);
lora/dora inject adapters and freeze the base (`add_adapters`). `trainable_state` / `load_trainable` copy the
trainable encoder parameters and the heads out and back (checkpoints, the best-on-dev weights).
"""

from __future__ import annotations

import torch

from .errors import SpeechFTError
from .train_config import LoraSettings


def freeze_permanently(encoder) -> None:
    """The waveform front end and the pre-training-only parameters never train (Speech-FT keeps the conv
    feature extractor frozen for the whole run); nor do a family's constants (`Encoder.fixed_patterns`)."""
    for name, p in encoder.model.named_parameters():
        if encoder.is_frontend(name) or encoder.is_pretraining_only(name) or encoder.is_fixed(name):
            p.requires_grad_(False)
    # transformers' wav2vec2-style feature encoders set requires_grad on their own output in training mode
    # unless told otherwise, which would backpropagate through the whole frozen conv stack for nothing.
    for module in encoder.model.modules():
        if hasattr(module, "_requires_grad") and not any(p.requires_grad for p in module.parameters()):
            module._requires_grad = False


def add_adapters(encoder, settings: LoraSettings, dora: bool):
    """Inject LoRA/DoRA adapters (peft) into the encoder's linears, in place; the base weights are frozen."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    lora_cfg = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        use_dora=dora,
        bias="none",
    )
    try:
        return LoraModel(encoder.model, lora_cfg, "default")  # modifies encoder.model in place
    except ValueError as e:
        raise SpeechFTError(f"lora.targets={list(settings.targets)}: {str(e).splitlines()[0][:200]}") from None


def trainable_state(enc_params, heads) -> dict[str, torch.Tensor]:
    """CPU copies of what training changes: the trainable encoder parameters and the heads."""
    snap = {f"encoder.{n}": p.detach().to("cpu", copy=True) for n, p in enc_params}
    for name, head in heads.items():
        snap.update({f"head.{name}.{k}": v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()})
    return snap


def load_trainable(enc_params, heads, tensors: dict, where: str) -> None:
    params = dict(enc_params)
    want = {f"encoder.{n}" for n in params} | {f"head.{t}.{k}" for t, h in heads.items() for k in h.state_dict()}
    if set(tensors) != want:
        odd = sorted(set(tensors) ^ want)
        raise SpeechFTError(
            f"{where}: does not match this run's model (first mismatched key {odd[0]!r}); it was "
            "written by a different encoder, task or method"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"encoder.{n}"])
    for t, h in heads.items():
        h.load_state_dict({k[len(f"head.{t}.") :]: v for k, v in tensors.items() if k.startswith(f"head.{t}.")})
