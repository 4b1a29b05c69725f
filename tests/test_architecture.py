"""The house rules, checked on the package's own source: sizes, and one owner per concern
(the one-TSV-reader rule lives in test_manifest.py, beside the reader).

Each rule names the offenders, so a failure says where to look. The numbers come from the
project's rules of thumb: a newcomer reads a module in one sitting and a function on one screen.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import speechft

PACKAGE = Path(speechft.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
# Remote code: copied into DeCoAR 2.0 model folders and loaded by transformers without speechft,
# so it cannot import speechft's constants.
STANDALONE = {"encoders/decoar2_hf.py"}


def modules() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_rules_see_the_whole_package():
    found = modules()
    assert len(found) > 30 and "merge.py" in found and "data/tasks.py" in found


def test_no_module_over_600_lines():
    over = {name: src.count("\n") for name, src in modules().items() if src.count("\n") > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_function_over_100_lines():
    over = []
    for name, src in modules().items():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    over.append(f"{name}:{node.lineno} {node.name} ({n} lines)")
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"


def test_exactly_one_module_reads_and_writes_safetensors_files():
    """safetensors_io.py parses and writes the format itself; everyone else goes through it (HF's own
    save_pretrained / from_pretrained aside)."""
    users = {
        name for name, src in modules().items() if any(m.split(".")[0] == "safetensors" for m in imported_modules(src))
    }
    parsers = {name for name, src in modules().items() if '"<Q"' in src}  # the 8-byte header length
    assert users <= {"safetensors_io.py"}, f"modules that use the safetensors package directly: {sorted(users)}"
    assert parsers == {"safetensors_io.py"}, f"modules that parse safetensors headers: {sorted(parsers)}"


def test_the_sample_rate_is_written_once():
    places = []
    for name, src in modules().items():
        if name in STANDALONE:
            continue
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.NUMBER and tok.string.replace("_", "") in ("16000", "16000.0", "16e3"):
                places.append(f"{name}:{tok.start[0]}")
    assert places == [places[0]] and places[0].startswith("data/audio.py:"), places
    line = int(places[0].split(":")[1])
    assert "SAMPLE_RATE = 16000" in modules()["data/audio.py"].splitlines()[line - 1]


def test_the_cache_root_is_defined_once():
    owners = {name for name, src in modules().items() if 'SPEECHFT_CACHE")' in src or "SPEECHFT_CACHE')" in src}
    assert owners == {"io_utils.py"}, sorted(owners)


def test_provenance_file_name_is_defined_once():
    owners = [name for name, src in modules().items() if '"speechft.json"' in src]
    assert owners == ["provenance.py"], owners


def test_helper_rules_catch_what_they_claim(tmp_path):
    """The checks above would flag an oversized function and a stray 16000 (they are not vacuous)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    fn = tree.body[0]
    assert fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    toks = [t.string for t in tokenize.generate_tokens(io.StringIO("rate = 16000  # 16000\n").readline)]
    assert toks.count("16000") == 1  # the comment is not a NUMBER token
