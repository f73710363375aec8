"""Text for calibration and evaluation: where it comes from, and how it is kept apart.

A source is `builtin:NAME` (offline text that ships with Python), a local `.txt`/`.jsonl` file
(`text` field), or `hf:NAME[:CONFIG]` (a `datasets` name; needs the network or a warm cache).
Every source is a list of documents. When calibration and evaluation name the same source,
the documents are split in two fixed, disjoint parts, so the quality gate never scores a
model on text it was calibrated on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmi_runtime.errors import ConfigError

# Every HOLDOUT_EVERY-th document (in the source's fixed order) is held out for evaluation.
HOLDOUT_EVERY = 3
# Held-out paragraphs sharing any run of this many words with the calibration text are dropped
# (documents of one source quote each other: the usual n-gram decontamination).
DECONTAMINATE_WORDS = 8


@dataclass(frozen=True)
class Corpus:
    source: str
    documents: tuple[str, ...]
    licence: str

    @property
    def chars(self) -> int:
        return sum(len(d) for d in self.documents)


def _python_docs() -> Corpus:
    """The Python Language Reference as shipped in the standard library (`pydoc_data.topics`,
    ~460 KB of English prose, PSF licence). Topics nest (`compound` contains `if`, `while`...),
    so paragraphs are de-duplicated across topics: each paragraph lives in one document only."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    documents = []
    for key in sorted(topics):
        kept = []
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            norm = " ".join(paragraph.split())
            if norm and norm not in seen:
                seen.add(norm)
                kept.append(paragraph.strip("\n"))
        if kept:
            documents.append("\n\n".join(kept))
    return Corpus("builtin:python-docs", tuple(documents), "PSF-2.0 (Python documentation)")


BUILTIN = {"python-docs": _python_docs}


def load_corpus(source: str) -> Corpus:
    """Read every document of `source` (see module docstring for the forms)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN:
            raise ConfigError(
                f"unknown built-in corpus '{name}'",
                hint=f"built-in corpora: {', '.join('builtin:' + n for n in BUILTIN)}; "
                "or give a .txt/.jsonl file, or hf:DATASET",
            )
        return BUILTIN[name]()
    if source.startswith("hf:"):
        return _hf_corpus(source)
    return _file_corpus(source)


def _file_corpus(source: str) -> Corpus:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"calibration/evaluation text '{source}' is not a file",
            hint="give a .txt or .jsonl file (a `text` field per line), builtin:python-docs, or hf:DATASET",
        )
    if path.suffix == ".jsonl":
        documents = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as err:
                raise ConfigError(
                    f"{path}:{number}: not a JSON object with a 'text' field",
                    hint='each line of a .jsonl corpus must look like {"text": "..."}',
                ) from err
            documents.append(str(text))
    elif path.suffix == ".txt":
        # A plain text file: its blank-line separated paragraphs are the documents.
        text = path.read_text(encoding="utf-8")
        documents = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
    else:
        raise ConfigError(
            f"unsupported corpus file type '{path.suffix}' ({path})",
            hint="use a .txt file or a .jsonl file with a `text` field per line",
        )
    if not documents:
        raise ConfigError(f"the corpus file {path} holds no text")
    return Corpus(str(path), tuple(documents), "given by the user")


def _hf_corpus(source: str) -> Corpus:
    name, _, config = source.removeprefix("hf:").partition(":")
    try:
        import datasets
    except ImportError as err:
        from lmi_runtime.errors import MissingExtraError

        raise MissingExtraError("datasets", "compile") from err
    try:
        data = datasets.load_dataset(name, config or None, split="train")
    except Exception as err:  # datasets raises many types: offline, not found, gated...
        raise ConfigError(
            f"could not load the dataset '{name}' ({type(err).__name__}: {err})",
            hint="hf: datasets need the network (or a datasets cache that already holds it); "
            "offline, use builtin:python-docs or a local .txt/.jsonl file",
        ) from err
    if "text" not in data.column_names:
        raise ConfigError(
            f"the dataset '{name}' has no 'text' column (columns: {', '.join(data.column_names)})"
        )
    documents = tuple(t for t in data["text"] if t and t.strip())
    return Corpus(source, documents, f"see the dataset card of {name}")


@dataclass(frozen=True)
class TextSplit:
    calibration: Corpus
    evaluation: Corpus


def calibration_and_evaluation(calibration_source: str, evaluation_source: str) -> TextSplit:
    """Load both corpora; if they are the same source, split its documents disjointly."""
    calibration = load_corpus(calibration_source)
    if evaluation_source != calibration_source:
        return TextSplit(calibration, load_corpus(evaluation_source))
    docs = calibration.documents
    if len(docs) < 2:
        raise ConfigError(
            f"'{calibration_source}' holds a single document, so it cannot give both calibration "
            "and evaluation text without overlap",
            hint="give the quality gate its own dataset, or split the text into paragraphs",
        )
    held_out = {i for i in range(len(docs)) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1} or {len(docs) - 1}
    kept = tuple(d for i, d in enumerate(docs) if i not in held_out)
    seen = set().union(*(_word_ngrams(d) for d in kept))
    evaluation = []
    for i in sorted(held_out):
        paragraphs = [p for p in re.split(r"\n\s*\n", docs[i]) if not (_word_ngrams(p) & seen)]
        if paragraphs:
            evaluation.append("\n\n".join(paragraphs))
    return TextSplit(
        Corpus(calibration.source, kept, calibration.licence),
        Corpus(calibration.source, tuple(evaluation), calibration.licence),
    )


def _word_ngrams(text: str, n: int = DECONTAMINATE_WORDS) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def token_stream(tokenizer, corpus: Corpus) -> list[int]:
    """All documents tokenized and joined by the end-of-sequence token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for document in corpus.documents:
        ids.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return ids


def calibration_samples(tokenizer, corpus: Corpus, num_samples: int, seq_len: int) -> list[list[int]]:
    """`num_samples` non-overlapping windows of `seq_len` tokens, spread over the whole corpus."""
    ids = token_stream(tokenizer, corpus)
    available = len(ids) // seq_len
    if available < num_samples:
        raise ConfigError(
            f"the calibration text {corpus.source} gives {len(ids)} tokens: {available} samples of "
            f"{seq_len} tokens, fewer than the {num_samples} asked for",
            hint="lower calibration num_samples or seq_len, or give a larger corpus",
        )
    stride = available // num_samples  # spread the picks over every topic, not just the first
    return [ids[i * stride * seq_len : (i * stride + 1) * seq_len] for i in range(num_samples)]
