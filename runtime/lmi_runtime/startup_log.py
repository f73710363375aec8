"""A quiet, informative log for `lmi-serve`: our own lines ("loading …", "loaded … in N s"),
uvicorn's, and warnings or errors from libraries — but no progress bars (transformers'
"Loading weights", compressed-tensors' "Compressing model") and no deprecation chatter from
the libraries we call, which say nothing an operator can act on. Every line is redacted."""

from __future__ import annotations

import logging
import os
import warnings

from lmi_runtime.redact import install_log_redaction

# Read by tqdm, huggingface_hub and transformers when they are imported (so: set before).
QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
NOISY_PACKAGES = ("transformers", "torch", "compressed_tensors", "huggingface_hub", "accelerate")


def quiet_environment() -> None:
    """Set QUIET_ENV (unless the user set them): must run before tqdm is first imported."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def configure_logging(level: str) -> None:
    quiet_environment()
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for package in NOISY_PACKAGES:
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=package)
        warnings.filterwarnings("ignore", category=FutureWarning, module=package)
        warnings.filterwarnings("ignore", category=UserWarning, module=package)
        logging.getLogger(package).setLevel(max(logging.ERROR, logging.getLogger().level))
    _disable_library_progress_bars()
    install_log_redaction()


def _disable_library_progress_bars() -> None:
    """Libraries pass `disable=` to tqdm themselves (compressed-tensors' "Applying quantization
    config", "Compressing model"), which overrides TQDM_DISABLE: a server process has no
    terminal to draw bars on, so every tqdm bar in it is disabled."""
    import tqdm.std

    if not getattr(tqdm.std.tqdm.__init__, "_lmi_quiet", False):
        original = tqdm.std.tqdm.__init__

        def quiet_init(self, *args, **kwargs):
            kwargs["disable"] = True
            original(self, *args, **kwargs)

        quiet_init._lmi_quiet = True  # type: ignore[attr-defined]
        tqdm.std.tqdm.__init__ = quiet_init  # type: ignore[method-assign]
    try:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        disable_progress_bars()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are base dependencies
        pass
