"""The `superb` probing protocol (speechft/configs/protocol_superb.yaml) and per-task head sizes (ProbeConfig.per_task):
the exact SUPERB ASR head, per-type/per-name sizes that change the built head, one-line errors naming the key,
and results.json recording the protocol."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import cli, make_ctc_task

from speechft.config import load_config
from speechft.errors import SpeechFTError
from speechft.heads import TaskHead
from speechft.io_utils import read_json
from speechft.probe_asv import XVectorHead
from speechft.probe_train import PROTOCOL_DIR, ProbeConfig, load_protocol


def task(type_: str, name: str):
    return SimpleNamespace(type=type_, name=name)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lstm_params(inp: int, hidden: int, layers: int) -> int:
    """A bidirectional LSTM's parameters by hand: per layer and direction W_ih (4H x in), W_hh (4H x H),
    b_ih and b_hh (4H each); layer 1 reads `inp`, the others 2H."""
    total = 0
    for layer in range(layers):
        width = inp if layer == 0 else 2 * hidden
        total += 2 * (4 * hidden * width + 4 * hidden * hidden + 2 * 4 * hidden)
    return total


def test_superb_preset_builds_superbs_asr_head_exactly():
    cfg = load_protocol("superb")
    assert cfg.name == "superb" and cfg.standardize is False
    asr = cfg.for_task(task("ctc", "asr"))
    head = TaskHead("ctc", list("abcdefghij"), 16, 3, asr.head_config("ctc")).head
    # 2 layers of 1024 per direction over a 1024 projector: 16,793,600 + 25,182,208 (derived in lstm_params)
    assert lstm_params(1024, 1024, 2) == 41_975_808
    assert n_params(head.lstm) == 41_975_808
    assert (head.lstm.num_layers, head.lstm.hidden_size, head.lstm.dropout) == (2, 1024, 0.2)
    assert n_params(head.projector) == 16 * 1024 + 1024
    assert n_params(head.output) == 2048 * 11 + 11  # 10 characters + blank
    assert (asr.lrs, asr.ctc_batch_size, asr.min_steps, asr.standardize) == ([1e-3, 1e-4, 1e-5], 32, 200000, False)
    sf = cfg.for_task(task("ctc", "sf"))  # SF is ASR's head (s3prl ctc/snips.yaml)
    assert sf.task_settings() == asr.task_settings()


def test_superb_preset_pr_utterance_and_asv_settings():
    cfg = load_protocol("superb")
    pr = cfg.for_task(task("ctc", "pr"))
    head = TaskHead("ctc", list("abc"), 16, 3, pr.head_config("ctc")).head
    assert head.lstm is None and n_params(head) == (16 * 256 + 256) + (256 * 4 + 4)
    assert (pr.lrs, pr.dropout, pr.min_steps) == ([1e-2, 1e-3, 1e-4], 0.0, 100000)
    for name in ("ks", "ic", "sid"):
        c = cfg.for_task(task("classification", name))
        assert (c.proj_dim, c.dropout, c.batch_size, c.min_steps) == (256, 0.0, 32, 200000), name
    assert cfg.for_task(task("classification", "er")).min_steps == 30000
    asv = cfg.for_task(task("verification", "asv"))
    x = XVectorHead(16, 3, 5, asv.proj_dim)
    assert (x.connector.out_features, x.embedding.in_features, asv.ctc_batch_size) == (512, 2 * 1536, 50)


def test_per_task_sizes_change_the_built_head():
    cfg = ProbeConfig(
        per_task={
            "classification": {"proj_dim": 8},
            "tones": {"proj_dim": 4},  # the name's entry goes on top of the type's
            "ctc": {"ctc_head": "bilstm", "proj_dim": 4, "lstm_hidden": 3, "lstm_layers": 1},
        }
    )

    def head(type_, name, labels):
        return TaskHead(type_, labels, 16, 3, cfg.for_task(task(type_, name)).head_config(type_)).head

    assert n_params(head("classification", "other", ["a", "b"])) == (16 * 8 + 8) + (8 * 2 + 2) == 154
    assert n_params(head("classification", "tones", ["a", "b"])) == (16 * 4 + 4) + (4 * 2 + 2) == 78
    assert lstm_params(4, 3, 1) == 216
    assert n_params(head("ctc", "beeps", list("abc"))) == (16 * 4 + 4) + 216 + (6 * 4 + 4) == 312
    plain = TaskHead("ctc", list("abc"), 16, 3, ProbeConfig().head_config("ctc")).head  # the defaults: linear, 256
    assert plain.lstm is None and n_params(plain) == (16 * 256 + 256) + (256 * 4 + 4)


@pytest.mark.parametrize(
    "per_task, message",
    [
        ({"ctc": {"hidden": 3}}, "per_task.ctc: unknown key 'hidden'; valid keys: lrs, epochs"),
        ({"pr": {"proj_dim": "wide"}}, "per_task.pr.proj_dim: expected an integer, got 'wide'"),
        ({"pr": {"proj_dim": 0}}, "per_task.pr: proj_dim must be an integer from 1 to 65536, got 0"),
        ({"asr": {"dropout": 1.5}}, "per_task.asr: dropout must be a number in [0, 1), got 1.5"),
        ({"asr": {"ctc_head": "gru"}}, "per_task.asr: ctc_head must be 'linear' or 'bilstm', got 'gru'"),
        ({"sid": [1, 2]}, "per_task.sid: expected a mapping of lrs, epochs"),
    ],
)
def test_a_bad_per_task_entry_is_one_line_naming_it(per_task, message):
    with pytest.raises(SpeechFTError) as e:
        ProbeConfig(per_task=per_task)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_per_task_entry_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "probe.yaml"
    path.write_text("per_task:\n  asr:\n    lstm_layers: 100\n")
    with pytest.raises(SpeechFTError) as e:
        load_config(ProbeConfig, path)
    assert str(e.value).startswith(f"{path}: per_task.asr: lstm_layers must be an integer from 0 to 64, got 100")


def test_protocol_names_and_the_packaged_file():
    assert load_protocol("speechft") == ProbeConfig()
    assert (PROTOCOL_DIR / "protocol_superb.yaml").is_file()
    with pytest.raises(SpeechFTError, match="--protocol s3prl: unknown protocol; use one of speechft, superb"):
        load_protocol("s3prl")


def test_evaluate_with_the_superb_protocol_records_it(tmp_path, tiny_encoder_dir):
    """--protocol superb with a --config on top (its per_task entries merge into the preset's) and --set."""
    ctc = make_ctc_task(tmp_path / "ctc", n=6)
    small = tmp_path / "small.yaml"
    small.write_text("per_task:\n  ctc: {proj_dim: 8, lstm_hidden: 4, lrs: [0.01], min_steps: 2}\n")
    out = tmp_path / "eval"
    argv = ["evaluate", "--encoder", tiny_encoder_dir(), "--task", ctc, "--out", out, "--no-cache", "--quiet"]
    assert cli(*argv, "--protocol", "superb", "--config", small, "--set", "min_steps=2") == 0
    results = read_json(out / "results.json")
    protocol = results["protocol"]
    assert (protocol["name"], protocol["standardize"], protocol["min_steps"]) == ("superb", False, 2)
    assert protocol["per_task"]["pr"]["lrs"] == [1e-2, 1e-3, 1e-4]  # the preset's entries kept
    entry = results["models"][0]["tasks"]["beeps"]
    assert entry["probe"] == {
        "lrs": [0.01],
        "epochs": 1,
        "min_steps": 2,
        "batch_size": 32,
        "ctc_batch_size": 32,
        "ctc_head": "bilstm",
        "lstm_layers": 2,
        "lstm_hidden": 4,
        "proj_dim": 8,
        "dropout": 0.2,
        "standardize": False,
    }
    assert [s["lr"] for s in entry["lr_search"]] == [0.01]
    assert entry["lr_search"][0]["epochs"] == 2  # 6 clips at batch 32: one update per epoch; min_steps 2


def test_set_reaches_inside_per_task():
    from speechft.config import load_config
    from speechft.probe_train import ProbeConfig

    cfg = load_config(ProbeConfig, None, ["per_task.ctc.proj_dim=512", "per_task.ctc.dropout=0.2"])
    assert cfg.per_task == {"ctc": {"proj_dim": 512, "dropout": 0.2}}


def test_slot_filling_takes_the_bilstm_head_by_default_and_per_task_goes_on_top():
    """SUPERB's SF takes ASR's BiLSTM head; the default protocol gives it to slot tasks (sf_head) and not to
    other ctc tasks, and a per_task entry still decides over it."""
    slots = SimpleNamespace(type="ctc", name="synth_sf", tokenizer="slots")
    chars = SimpleNamespace(type="ctc", name="synth_asr", tokenizer="char")
    cfg = ProbeConfig()
    assert cfg.for_task(slots).ctc_head == "bilstm" and cfg.for_task(chars).ctc_head == "linear"
    head = TaskHead("ctc", list("abc"), 16, 3, cfg.for_task(slots).head_config("ctc")).head
    assert n_params(head.lstm) == lstm_params(256, 256, 2)  # the default lstm_layers / lstm_hidden
    assert ProbeConfig(sf_head="linear").for_task(slots).ctc_head == "linear"
    assert ProbeConfig(per_task={"synth_sf": {"ctc_head": "linear"}}).for_task(slots).ctc_head == "linear"
    assert ProbeConfig(per_task={"ctc": {"ctc_head": "linear"}}).for_task(slots).ctc_head == "linear"
    with pytest.raises(SpeechFTError, match="sf_head must be 'linear' or 'bilstm', got 'gru'"):
        ProbeConfig(sf_head="gru")
