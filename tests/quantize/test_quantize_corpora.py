"""Calibration and evaluation text: sources, sampling, and that the two never overlap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from lmi_runtime.errors import ConfigError
from lmi_compile.quantize import corpora
from lmi_compile.quantize.evaluate import eval_windows


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _ngrams(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def test_builtin_calibration_and_evaluation_are_disjoint(tokenizer):
    split = corpora.calibration_and_evaluation("builtin:python-docs", "builtin:python-docs")
    assert not set(split.calibration.documents) & set(split.evaluation.documents)
    # What the stage really feeds: calibration samples vs evaluation windows, as tokens.
    samples = corpora.calibration_samples(tokenizer, split.calibration, num_samples=64, seq_len=512)
    windows = eval_windows(corpora.token_stream(tokenizer, split.evaluation), seq_len=512, max_tokens=20_000)
    assert len(samples) == 64 and all(len(s) == 512 for s in samples)
    assert sum(map(len, windows)) >= 19_000  # enough held-out text for the benchmark
    calibration_grams = set().union(*(_ngrams(s, 16) for s in samples))
    evaluation_grams = set().union(*(_ngrams(w, 16) for w in windows))
    assert not calibration_grams & evaluation_grams


def test_same_file_is_split_and_decontaminated(tmp_path):
    shared = "the quick brown fox jumps over the lazy dog again and again"
    docs = [f"document {i} says {shared}" if i % 3 == 2 else f"unique text number {i} " * 5 for i in range(9)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    split = corpora.calibration_and_evaluation(str(path), str(path))
    assert len(split.calibration.documents) == 6
    # Held-out documents 2, 5, 8 all repeat `shared`, which calibration never holds here...
    assert len(split.evaluation.documents) == 3
    # ...but once a calibration document quotes it, the held-out copies are dropped.
    docs[0] = shared
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    split = corpora.calibration_and_evaluation(str(path), str(path))
    assert split.evaluation.documents == ()


def test_text_file_paragraphs_are_documents(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nstill first\n\nsecond paragraph\n\n\nthird")
    assert corpora.load_corpus(str(path)).documents == ("first paragraph\nstill first", "second paragraph", "third")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"body": "no text field"}\n', "bad.jsonl:2"),
        ("data.csv", "a,b\n", "unsupported corpus file type"),
        ("missing.txt", None, "is not a file"),
    ],
)
def test_bad_corpus_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        corpora.load_corpus(str(path))


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        corpora.load_corpus("builtin:nope")
    assert "builtin:python-docs" in err.value.hint


def test_too_little_calibration_text_says_how_much_there_is(tokenizer):
    corpus = corpora.Corpus("tiny", ("just a few words here",), "test")
    with pytest.raises(ConfigError, match="fewer than the 4 asked for"):
        corpora.calibration_samples(tokenizer, corpus, num_samples=4, seq_len=64)


def test_hf_dataset_offline_is_a_clear_error(cli_env):
    env = cli_env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = (
        "from lmi_compile.quantize.corpora import load_corpus\n"
        "from lmi_runtime.errors import ConfigError\n"
        "try:\n    load_corpus('hf:wikitext:wikitext-2-raw-v1')\n"
        "except ConfigError as err:\n    print('CONFIG', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "CONFIG could not load the dataset 'wikitext'" in out.stdout, out.stderr
    assert "offline" in out.stdout
