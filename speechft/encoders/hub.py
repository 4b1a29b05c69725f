"""Hugging Face Hub ids as encoders: `org/name` or `org/name@revision` -> a speechft encoder folder, converted once.

Every command that takes an encoder turns its argument into a folder with `resolve_encoder(spec)`. A path that
exists locally is used as it is: a local folder always wins over a Hub id spelled the same. Anything else shaped
like `org/name[@revision]` is fetched with huggingface_hub's `snapshot_download`, which alone decides where its
cache is (HF_HOME, HF_HUB_CACHE), whether it may go online (HF_HUB_OFFLINE) and which token it sends for a gated
or private repository (HF_TOKEN, `hf auth login`). Only the files an encoder needs are fetched: config.json,
preprocessor_config.json and the weights (safetensors when the repository has them, else its pickled state dict).

The snapshot is then converted once into `$SPEECHFT_CACHE/hub/ORG--NAME/COMMIT-vN/`, keyed by the commit the
revision resolved to (and the converter's version N), written with atomic_dir under a lock, so concurrent or
killed runs never see half a folder. A later call finds the revision's commit in the Hub cache (its refs/) and
reuses that folder without any network request: `org/name` means the commit the local cache holds for `main`
once it holds one (`hf download org/name` moves it on; `@COMMIT` pins it exactly).

Conversion: config.json's model_type picks the family (hubert, wav2vec2, wavlm, data2vec-audio, whisper). The
weights are model.safetensors or its shards (speechft.safetensors_io), else pytorch_model.bin, its shards or one
.pt state dict, read with torch.load(weights_only=True) (speechft.encoders.convert.load_checkpoint): a pickle that
would call anything is refused before anything in it runs; other formats (TensorFlow, Flax) are refused. Only the
encoder is kept. A task head (HubertForCTC's lm_head, a classifier) is dropped and said so; Whisper's decoder and
wav2vec 2.0's quantizer are dropped as not part of an encoder. speechft.json records the repository, the revision
asked for, the commit, the sha256 of every source file and what was dropped.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ..errors import SpeechFTError
from ..io_utils import cache_root, read_json, sha256_file
from ..provenance import PROVENANCE_FILE

CONVERTER_VERSION = 1  # bump when a converted folder would come out differently: old ones are then left unused
HUB_FAMILIES = ("hubert", "wav2vec2", "wavlm", "data2vec", "whisper")
CONFIG_FILES = ["config.json", "preprocessor_config.json"]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
PICKLED_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin", "*.pt"]
# Where each family's encoder sits in the checkpoints transformers writes: XxxModel at the top level; XxxForCTC,
# XxxForPreTraining and XxxForSequenceClassification under the base model's prefix; Whisper's encoder inside
# WhisperForConditionalGeneration (model.encoder.) or WhisperModel (encoder.).
PREFIXES = {
    "hubert": ("hubert.",),
    "wav2vec2": ("wav2vec2.",),
    "wavlm": ("wavlm.",),
    "data2vec": ("data2vec_audio.",),
    "whisper": ("model.encoder.", "encoder."),
}
WHISPER_DECODER = ("model.decoder.", "decoder.", "proj_out.")
# Older checkpoints store weight-normalised convolutions (the positional conv) under torch's legacy names.
LEGACY_NAMES = (
    (".weight_g", ".parametrizations.weight.original0"),
    (".weight_v", ".parametrizations.weight.original1"),
)

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w.\-/]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
FIX = (
    "go online (unset HF_HUB_OFFLINE), or run `hf download {repo}` on a machine that is and copy its cache, "
    "or point HF_HUB_CACHE at a cache that holds it"
)


# ---- recognising and resolving a Hub id -----------------------------------------------------------------
def parse_hub_id(spec) -> tuple[str, str | None] | None:
    """(repo, revision or None) when `spec` spells a Hub id and no local path of that name exists; else None."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    s = os.fspath(spec)
    if not isinstance(s, str) or Path(s).exists() or s.startswith((".", "/", "~")):
        return None
    m = _HUB_ID.fullmatch(s)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or len(m["repo"]) > 96:
        return None
    return m["repo"], m["revision"]


def resolve_encoder(spec) -> Path:
    """The encoder folder `spec` names: a local path as given (checked later by whoever loads it), or the
    converted folder of a Hugging Face Hub id (`org/name`, `org/name@revision`; see the module docstring)."""
    hub = parse_hub_id(spec)
    if hub is None:
        return Path(spec)
    return hub_encoder(*hub)


def converted_dir(repo: str, commit: str) -> Path:
    return cache_root("hub") / repo.replace("/", "--") / f"{commit}-v{CONVERTER_VERSION}"


def _complete(folder: Path) -> bool:
    """A converted folder is renamed into place whole (atomic_dir), speechft.json written last inside it."""
    return (folder / "config.json").is_file() and (folder / PROVENANCE_FILE).is_file()


def hub_encoder(repo: str, revision: str | None = None) -> Path:
    """The speechft encoder folder of `repo` at `revision` (default main): converted once, then reused."""
    from .default import _lock  # the same first-use conversion guard as the embedded default's

    if revision is not None and _COMMIT.fullmatch(revision) and _complete(converted_dir(repo, revision)):
        return converted_dir(repo, revision)  # pinned and converted: not even the Hub cache is needed
    snapshot = _cached_snapshot(repo, revision)
    if snapshot is not None and _complete(converted_dir(repo, snapshot.name)):
        return converted_dir(repo, snapshot.name)
    # Not converted yet: online, let huggingface_hub complete the snapshot first (a cache filled by another tool
    # may lack preprocessor_config.json); offline, convert what the cache holds when it holds weights.
    if snapshot is None or _weight_files(snapshot) is None or not _hub().constants.HF_HUB_OFFLINE:
        snapshot = _download(repo, revision, partial=snapshot)
    out = converted_dir(repo, snapshot.name)
    with _lock(out.with_name(f".{out.name}.lock")):
        if not _complete(out):  # another process may have finished it while we waited
            convert_snapshot(snapshot, out, repo, revision or "main", overwrite=out.exists())
    return out


def _hub():
    """huggingface_hub, imported on first use (a local folder never needs it)."""
    import huggingface_hub

    return huggingface_hub


def _hub_cache() -> str:
    return str(Path(_hub().constants.HF_HUB_CACHE).expanduser())


def _spelled(repo: str, revision: str | None) -> str:
    return f"{repo}@{revision}" if revision else repo


def hub_snapshot(spec: str, files: list[str] | tuple[str, ...] = ()) -> Path:
    """The Hub cache's own snapshot folder of the Hub id `spec`, holding config.json, safetensors weights and
    `files` where the repository has them: for a command that reads a whole model as it is (export-whisper's
    --decoder-from). Fetched (or completed) when online; offline, what the cache holds."""
    hub = parse_hub_id(spec)
    if hub is None:
        raise SpeechFTError(f"'{spec}' is not a Hugging Face Hub id (org/name or org/name@revision)")
    repo, revision = hub
    patterns = [*CONFIG_FILES, *files, *SAFETENSORS_FILES]
    snapshot = _cached_snapshot(repo, revision, patterns)
    if snapshot is None or _weight_files(snapshot) is None or not _hub().constants.HF_HUB_OFFLINE:
        snapshot = _download(repo, revision, partial=snapshot, patterns=patterns, fallback=None)
    found = _weight_files(snapshot)
    if found is None or found[0] != "safetensors":
        raise SpeechFTError(
            f"{repo} (commit {snapshot.name}): no model.safetensors; a whole model is read from safetensors only"
        )
    return snapshot


def _cached_snapshot(repo: str, revision: str | None, patterns: list[str] | None = None) -> Path | None:
    """The Hub cache's snapshot folder for `revision`, without any network request; None when it has none."""
    hf = _hub()
    patterns = patterns or CONFIG_FILES + SAFETENSORS_FILES
    try:
        return Path(hf.snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True))
    except hf.errors.HFValidationError as e:
        raise SpeechFTError(
            f"'{_spelled(repo, revision)}' is not a local folder, nor a valid Hugging Face Hub id ({_first_line(e)})"
        ) from None
    except hf.errors.LocalEntryNotFoundError:  # also an incomplete snapshot (IncompleteSnapshotError)
        return None


def _download(
    repo: str,
    revision: str | None,
    partial: Path | None,
    patterns: list[str] | None = None,
    fallback: list[str] | None = CONFIG_FILES + PICKLED_FILES,
) -> Path:
    """Fetch `patterns` (default: config and safetensors weights), else `fallback` when that finds no weights
    (default: an older repository's pickled state dict)."""
    hf = _hub()
    spelled = _spelled(repo, revision)
    if hf.constants.HF_HUB_OFFLINE:
        raise _not_cached(repo, revision, partial, "HF_HUB_OFFLINE is set")
    try:
        path = Path(
            hf.snapshot_download(repo, revision=revision, allow_patterns=patterns or CONFIG_FILES + SAFETENSORS_FILES)
        )
        if _weight_files(path) is None and fallback:  # an older repository: weights only as a pickled state dict
            path = Path(hf.snapshot_download(repo, revision=path.name, allow_patterns=fallback))
    except hf.errors.GatedRepoError:
        raise SpeechFTError(
            f"'{spelled}' is a gated Hugging Face model and no accepted token was sent: accept its terms at "
            f"https://huggingface.co/{repo}, then log in with `hf auth login` or set HF_TOKEN"
        ) from None
    except hf.errors.RepositoryNotFoundError:
        raise SpeechFTError(
            f"'{spelled}' is neither a local folder nor a model on the Hugging Face Hub (a private one needs "
            "`hf auth login` or HF_TOKEN); check the spelling"
        ) from None
    except hf.errors.RevisionNotFoundError:
        raise SpeechFTError(
            f"'{spelled}': the Hub repository {repo} has no revision '{revision}'; give a branch, tag or commit it has"
        ) from None
    except hf.errors.LocalEntryNotFoundError as e:  # the Hub could not be reached and the cache lacks it
        cause = e.__cause__ or e
        raise _not_cached(repo, revision, partial, f"the Hub could not be reached: {_first_line(cause)}") from None
    except (hf.errors.HfHubHTTPError, OSError) as e:
        raise SpeechFTError(f"'{spelled}': download from the Hugging Face Hub failed ({_first_line(e)})") from None
    return path


def _not_cached(repo: str, revision: str | None, partial: Path | None, why: str) -> SpeechFTError:
    """One line: which id, which cache was searched, what it holds of the repo, and how to fix it."""
    spelled, cache, fix = _spelled(repo, revision), _hub_cache(), FIX.format(repo=repo)
    if partial is not None:
        others = sorted(p.name for p in partial.iterdir() if p.name not in CONFIG_FILES)
        has = f" (it has {', '.join(others[:4])})" if others else ""
        return SpeechFTError(
            f"'{spelled}': the Hugging Face cache {cache} holds commit {partial.name} of {repo} but no "
            f"model.safetensors or pytorch_model.bin{has}, and {why}; speechft reads only those: {fix}"
        )
    held = _cached_revisions(repo)
    if held:
        return SpeechFTError(
            f"'{spelled}': the Hugging Face cache {cache} holds {repo} but not revision '{revision or 'main'}' "
            f"(it has {', '.join(held[:4])}), and {why}; pass one of those, or {fix}"
        )
    return SpeechFTError(
        f"'{spelled}' is not a local folder, and the Hugging Face cache {cache} holds no snapshot of {repo} "
        f"({why}); {fix}"
    )


def _cached_revisions(repo: str) -> list[str]:
    """What the Hub cache holds of `repo`, as `ref -> commit` or bare commits (huggingface_hub's own scan)."""
    hf = _hub()
    try:
        info = hf.scan_cache_dir(_hub_cache())
    except Exception:  # no cache folder at all, or one it cannot read: nothing to list
        return []
    held = []
    for r in info.repos:
        if r.repo_id == repo and r.repo_type == "model":
            for rev in sorted(r.revisions, key=lambda x: x.commit_hash):
                refs = sorted(rev.refs)
                held += [f"{ref} -> {rev.commit_hash}" for ref in refs] or [rev.commit_hash]
    return held


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


# ---- converting a snapshot ------------------------------------------------------------------------------
def _weight_files(snapshot: Path) -> tuple[str, list[Path]] | None:
    """("safetensors" | "pickle", the files) of a snapshot's weights, None when it has none."""
    if (snapshot / "model.safetensors").is_file() or (snapshot / "model.safetensors.index.json").is_file():
        return "safetensors", []  # read as a whole by safetensors_io.Checkpoint (single file or shards)
    index = snapshot / "pytorch_model.bin.index.json"
    if index.is_file():
        shards = read_json(index).get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise SpeechFTError(f"{index}: has no 'weight_map'; the repository's index is broken")
        return "pickle", [snapshot / s for s in sorted(set(map(str, shards.values())))]
    if (snapshot / "pytorch_model.bin").is_file():
        return "pickle", [snapshot / "pytorch_model.bin"]
    pt = sorted(snapshot.glob("*.pt"))
    if len(pt) == 1:
        return "pickle", pt
    return None


class _SourceWeights:
    """A snapshot's tensors by name, with the sha256 of every file they came from."""

    def __init__(self, snapshot: Path, repo: str):
        from ..safetensors_io import Checkpoint

        found = _weight_files(snapshot)
        if found is None:
            others = sorted(p.name for p in snapshot.iterdir() if p.name not in CONFIG_FILES)
            raise SpeechFTError(
                f"{repo} (commit {snapshot.name}): no model.safetensors or pytorch_model.bin"
                f"{' (found ' + ', '.join(others[:4]) + ')' if others else ''}; speechft reads safetensors or "
                "a PyTorch state dict only"
            )
        self.kind, self.files = found
        self.sha256: dict[str, str] = {}
        self._ckpt, self._state = None, {}
        if self.kind == "safetensors":
            self._ckpt = Checkpoint(snapshot)
            self.names = list(self._ckpt.spec())
            return
        from .convert import load_checkpoint  # torch.load(weights_only=True): refuses pickles that run code

        for f in self.files:
            obj = load_checkpoint(f)
            if not isinstance(obj, dict) or not obj or not all(_is_tensor(v) for v in obj.values()):
                raise SpeechFTError(f"{f}: not a state dict (a mapping of names to tensors); speechft cannot read it")
            self._state.update(obj)
            self.sha256[f.name] = sha256_file(f)
        self.names = list(self._state)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self._ckpt is not None:
            return {k: shape for k, (_, shape) in self._ckpt.spec().items()}
        return {k: tuple(v.shape) for k, v in self._state.items()}

    def read(self, name: str):
        return self._ckpt.read(name) if self._ckpt is not None else self._state[name]

    def close(self) -> dict[str, str]:
        """Finish hashing (the safetensors reader hashes as it reads) and release the files."""
        if self._ckpt is not None:
            self.sha256 = self._ckpt.sha256()
            self._ckpt.close()
        return self.sha256


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _modern(name: str) -> str:
    for old, new in LEGACY_NAMES:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def encoder_names(names: list[str], family: str, expected: set[str]) -> dict[str, str]:
    """source name -> encoder name, under whichever of the family's prefixes (or none) fills the most of
    `expected` (the encoder's own state-dict names)."""
    best: dict[str, str] = {}
    for prefix in ("", *PREFIXES[family]):
        found = {k: _modern(k[len(prefix) :]) for k in names if k.startswith(prefix)}
        found = {k: v for k, v in found.items() if v in expected}
        if len(found) > len(best):
            best = found
    return best


def _dropped(names: list[str], mapping: dict[str, str], family: str) -> dict[str, list[str]]:
    """The source tensors left out of the encoder, by kind: a task head, Whisper's decoder, pre-training-only."""
    from .families import family_info

    info = family_info(family)
    out: dict[str, list[str]] = {"head": [], "decoder": [], "pretraining_only": []}
    for k in names:
        if k in mapping:
            continue
        if family == "whisper" and k.startswith(WHISPER_DECODER):
            out["decoder"].append(k)
        elif info.is_pretraining_only(k) or any(info.is_pretraining_only(k[len(p) :]) for p in PREFIXES[family]):
            out["pretraining_only"].append(k)
        else:
            out["head"].append(k)
    return {kind: sorted(keys) for kind, keys in out.items() if keys}


def _normalization(snapshot: Path, family: str, config) -> dict:
    """Whether the model reads normalised waveforms: the repository's preprocessor_config.json says
    (`do_normalize`), else the front end does (the layer-norm "large" models were trained on normalised audio)."""
    if family == "whisper":
        return {}
    pre = snapshot / "preprocessor_config.json"
    value = read_json(pre).get("do_normalize") if pre.is_file() else None
    if isinstance(value, bool):
        return {"normalize_waveform": value, "normalize_from": "preprocessor_config.json do_normalize"}
    layer = getattr(config, "feat_extract_norm", "layer") == "layer"
    return {"normalize_waveform": layer, "normalize_from": "feat_extract_norm (no preprocessor_config.json)"}


def convert_snapshot(snapshot: Path, out: Path, repo: str, revision: str, overwrite: bool = False) -> Path:
    """A Hub snapshot folder (config.json + weights) -> the speechft encoder folder `out`."""
    import torch

    from .base import quiet_transformers
    from .families import MODEL_TYPES
    from .registry import family_class

    commit = snapshot.name
    where = f"{repo} (commit {commit})"
    if not (snapshot / "config.json").is_file():
        raise SpeechFTError(f"{where}: no config.json; not a transformers model speechft can read")
    raw = read_json(snapshot / "config.json")
    family = MODEL_TYPES.get(raw.get("model_type"))
    if family not in HUB_FAMILIES:
        raise SpeechFTError(
            f"{where}: model_type '{raw.get('model_type')}' is not a speech encoder speechft reads from the Hub; "
            "supported: hubert, wav2vec2, wavlm, data2vec-audio, whisper"
        )
    cls = family_class(family)
    with quiet_transformers():
        config = cls.config_class.from_pretrained(snapshot)
    src = _SourceWeights(snapshot, repo)
    try:
        mapping, model = _encoder_weights(src, cls, config, where)
        hashes = src.close()
    except BaseException:
        src.close()
        raise
    side = [*CONFIG_FILES, "model.safetensors.index.json", "pytorch_model.bin.index.json"]
    hashes = {**hashes, **{f: sha256_file(snapshot / f) for f in side if (snapshot / f).is_file()}}
    arch = (raw.get("architectures") or [type(model).__name__])[0]
    dropped = _dropped(src.names, mapping, family)
    hub = {
        "repo": repo,
        "revision": revision,
        "commit": commit,
        "architecture": arch,
        "weights_from": src.kind if src.kind == "safetensors" else "pickle (torch.load weights_only=True)",
        "files_sha256": dict(sorted(hashes.items())),
        "dropped": dropped,
    }
    if dropped.get("head"):
        heads = sorted({k.split(".")[0] for k in dropped["head"]})
        what = "CTC head" if arch.endswith("ForCTC") else "task head"
        hub["note"] = (
            f"{repo} is a {arch} checkpoint: speechft uses its encoder; its {what} ({', '.join(heads)}) is not kept"
        )
        print(f"speechft: note: {hub['note']}", file=sys.stderr)
    prov = {
        "source": f"Hugging Face Hub {repo} @ {commit}",
        "hub": hub,
        "converted_by": "speechft.encoders.hub",
        "converter_version": CONVERTER_VERSION,
        **_normalization(snapshot, family, config),
        "parents": [],
    }
    pre = snapshot / "preprocessor_config.json"
    extra = {pre.name: pre.read_bytes()} if pre.is_file() else None
    with torch.no_grad():
        return cls(model, prov).save(out, overwrite=overwrite, extra_files=extra)


def _encoder_weights(src: _SourceWeights, cls, config, where: str):
    """(source -> encoder name mapping, the encoder's HF model filled with the source's tensors)."""
    import torch

    from .base import quiet_transformers

    with torch.device("meta"), quiet_transformers():
        expected = cls.model_class(config).state_dict()
    mapping = encoder_names(src.names, cls.family, set(expected))
    if "masked_spec_embed" in expected and "masked_spec_embed" not in mapping.values():
        # No mask embedding in the file (a fine-tuned export): build the model without one, as `convert` does.
        config.mask_time_prob = config.mask_feature_prob = 0.0
        with torch.device("meta"), quiet_transformers():
            expected = cls.model_class(config).state_dict()
    missing = sorted(set(expected) - set(mapping.values()))
    if missing:
        raise SpeechFTError(
            f"{where}: the weights lack {len(missing)} of the {cls.family} encoder's tensors "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); they do not match config.json"
        )
    shapes = src.shapes()
    for k, name in mapping.items():
        if tuple(shapes[k]) != tuple(expected[name].shape):
            raise SpeechFTError(
                f"{where}: weight '{k}' has shape {tuple(shapes[k])} but config.json implies "
                f"{tuple(expected[name].shape)}; the repository's config does not match its weights"
            )
    state = {}
    for k, name in mapping.items():
        t = src.read(k)
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SpeechFTError(f"{where}: weight '{k}' contains NaN or infinite values; the checkpoint is corrupt")
        state[name] = t.float() if t.is_floating_point() else t  # fp32 master weights, as every speechft folder
    torch.manual_seed(0)
    with quiet_transformers():
        model = cls.model_class(config)
    model.load_state_dict(state, strict=True)
    return mapping, model.eval()
