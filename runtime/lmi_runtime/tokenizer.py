"""The served model's tokenizer, through the class `AutoTokenizer` chose when the artifact was built.

Why: `AutoTokenizer` imports transformers' model registry to choose a class (auto_factory,
generation, and what they import: scikit-learn, scipy and FSDP where installed). On the H100
machine a start spent 9.6 s between its imports and its tokenizer, in a 21.4 s start from a
kernel cache, and the tokenizer alone took 10.3-11.4 s there against 2.1-2.3 s through the
class itself (fresh processes after `import torch`); on 2 CPU cores, loading the bundled SmolLM2 artifact took 3.7-4.0 s through
`AutoTokenizer` against 2.3-2.5 s through the class itself with the dev tools installed, and
2.5-2.7 against 2.0-2.1 s in a serving install (`load_backend`, 3 loads each). The compile
stage runs `AutoTokenizer` once and records the class it chose in the manifest
(`ModelInfo.tokenizer_class`, a name transformers exports); a start then imports that class
alone. A folder without a manifest, a tokenizer with remote code, or a name this transformers
lacks goes through `AutoTokenizer` as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmi_runtime.modelfolder import check_tokenizer

log = logging.getLogger("lmi_runtime.tokenizer")


def load_tokenizer(root: Path, trust_remote_code: bool, recorded: str | None = None):
    """The tokenizer in `root`; `recorded`: the class the artifact's manifest names. When it
    fails to load, a corrupt tokenizer file is named (the fetch stage's own check), rather than
    a bare JSONDecodeError from inside transformers."""
    cls = _recorded_class(recorded)
    if cls is None:
        from transformers import AutoTokenizer as cls
    try:
        return cls.from_pretrained(root, trust_remote_code=trust_remote_code, clean_up_tokenization_spaces=False)
    except Exception:
        check_tokenizer(root, str(root))
        raise


def class_to_record(tokenizer) -> str | None:
    """What a manifest records for `tokenizer` (loaded by `AutoTokenizer`): its class's name
    when transformers exports that class under it (not remote code), else None."""
    import transformers

    name = type(tokenizer).__name__
    return name if getattr(transformers, name, None) is type(tokenizer) else None


def _recorded_class(name: str | None):
    """The tokenizer class transformers exports as `name`; None (AutoTokenizer decides) when
    there is none. Only transformers' own names are looked up, so a manifest cannot point the
    start at other code."""
    if not name:
        return None
    import transformers
    from transformers import PreTrainedTokenizerBase

    try:
        cls = getattr(transformers, name)
    except (AttributeError, ImportError):  # another transformers version's class
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase)):
        log.warning("the manifest's tokenizer class %r is not a tokenizer in transformers %s; using AutoTokenizer",
                    name, transformers.__version__)
        return None
    return cls
