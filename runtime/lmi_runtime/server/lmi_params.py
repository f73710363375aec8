"""LMI/TGI `parameters` → the engine's `SamplingParams` (shared by lmi.py and tgi.py)."""

from __future__ import annotations

from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.server.errors import HTTPError
from lmi_runtime.server.generation import engine_params, stop_list
from lmi_runtime.server.schemas import LmiParameters


def sampling_params(p: LmiParameters) -> SamplingParams:
    """LMI's parameters → the engine's. `do_sample` absent: sampling if temperature, top_p or
    top_k is given (LMI ≥ 0.32); temperature 0 is greedy in any case."""
    if p.typical_p is not None and p.typical_p < 1.0:
        raise HTTPError(422, "'typical_p' is not supported by this server", param="typical_p",
                        hint="remove it, or use top_p / min_p")
    if p.watermark:
        raise HTTPError(422, "'watermark' is not supported by this server", param="watermark")
    sampling = p.do_sample if p.do_sample is not None else any(
        v is not None for v in (p.temperature, p.top_p, p.top_k))
    return engine_params(
        422,
        max_new_tokens=p.max_new_tokens,
        do_sample=sampling,
        temperature=1.0 if p.temperature is None else p.temperature,
        top_k=max(p.top_k or 0, 0),
        top_p=1.0 if p.top_p is None else p.top_p,
        min_p=p.min_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        presence_penalty=p.presence_penalty,
        ignore_eos=p.ignore_eos_token,
        seed=p.seed,
        stop=stop_list(p.stop, p.stop_sequences),
        logprobs=p.top_n_tokens or None,
        prompt_logprobs=0 if p.decoder_input_details else None,
    )


def samples(p: LmiParameters) -> int:
    return max(p.n, p.best_of or 1)
