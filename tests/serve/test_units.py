"""Engine parts on their own: detokenizer (with the real tokenizer), stop matching, scheduler
queue limit, sampler, metrics text, configuration precedence."""

from __future__ import annotations

import pytest
import torch

from lmi_runtime.config.engine_settings import engine_config
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from lmi_runtime.engine.kv_cache import KVCacheManager
from lmi_runtime.engine.request import QueueFull, SamplingParams, Sequence
from lmi_runtime.engine.sampler import filter_top_k_top_p, make_generator, sample
from lmi_runtime.engine.scheduler import Scheduler
from lmi_runtime.errors import ConfigError
from lmi_runtime.metrics import Counter, Histogram, Registry


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("text", ["Hello 👋 world 🎉🎉!", "日本語のテキスト、中文字符 and ünïcödé", "ok 🧑‍🚀 done"])
def test_incremental_detokenizer_is_utf8_safe(tokenizer, text):
    prompt = tokenizer("Say:")["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    naive = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in naive), "the text must split characters across tokens"
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text
    assert "" in pieces[:-1]  # something was held back until its character was complete


def test_stop_matcher_holds_back_and_cuts():
    stop = StopMatcher(["END", "\n\n"])
    assert stop.feed("abc E") == ("abc ", False)  # "E" may begin "END"
    assert stop.feed("N") == ("", False)
    assert stop.feed("Xyz") == ("ENXyz", False)  # not a stop after all: released
    assert stop.feed("1\n") == ("1", False)
    assert stop.feed("\nmore") == ("", True)  # stop found, its text and what follows dropped
    assert StopMatcher([]).feed("x\n\n") == ("x\n\n", False)
    tail = StopMatcher(["END"])
    assert tail.feed("fin E") == ("fin ", False) and tail.flush() == "E"


class Room(KVCacheManager):
    """Room for `free` sequences of any length."""

    def __init__(self, free: int):
        self.free_count = free

    def max_reservable_tokens(self) -> int:
        return 1 << 20

    def reserve(self, seq: Sequence) -> bool:
        if self.free_count == 0:
            return False
        self.free_count -= 1
        return True

    def free(self, seq: Sequence) -> None:
        self.free_count += 1


def test_scheduler_rejects_when_queue_full_and_admits_fifo():
    room = Room(2)
    sched = Scheduler(max_batch_size=4, max_queue=3, kv=room)
    seqs = [Sequence([1, 2], SamplingParams(), 4) for _ in range(3)]
    for seq in seqs:
        sched.add(seq)
    with pytest.raises(QueueFull) as err:
        sched.add(Sequence([1], SamplingParams(), 4))
    assert err.value.status == 503 and "MAX_CONCURRENT_REQUESTS" in err.value.message
    assert sched.admit() == seqs[:2]  # KV room for two only
    assert sched.num_running == 2 and sched.num_waiting == 1
    sched.remove(seqs[0])  # gives its room back
    assert sched.admit() == [seqs[2]]


def test_scheduler_admits_prompts_within_the_step_budget():
    sched = Scheduler(max_batch_size=8, max_queue=8, kv=Room(8))
    seqs = [Sequence([1] * n, SamplingParams(), 4) for n in (300, 200, 100, 50)]
    for seq in seqs:
        sched.add(seq)
    assert sched.admit(prompt_budget=100) == seqs[:1]  # the first joins even when longer than the budget
    assert sched.admit(prompt_budget=300) == seqs[1:3]  # 200 + 100 fit, + 50 would not
    assert sched.admit(prompt_budget=None) == seqs[3:]


def test_scheduler_charges_an_extra_sample_nothing_when_its_first_joins_in_the_same_step():
    sched = Scheduler(max_batch_size=8, max_queue=8, kv=Room(8))
    first = Sequence([1] * 60, SamplingParams(), 4)
    samples = [first] + [Sequence([1] * 60, SamplingParams(), 4, fork_of=first) for _ in range(2)]
    other = Sequence([2] * 50, SamplingParams(), 4)
    late = Sequence([1] * 60, SamplingParams(), 4, fork_of=first)
    for seq in [*samples, other, late]:
        sched.add(seq)
    assert sched.admit(prompt_budget=100) == samples  # 60 + 0 + 0; the next (50) would exceed it
    assert sched.admit(prompt_budget=100) == [other]  # a sample whose first ran before pays its prompt: 50 + 60
    assert sched.admit(prompt_budget=100) == [late]


def test_sampler_greedy_penalty_and_seeds():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0], [0.5, 0.1, 0.2, 0.3]])
    greedy = Sequence([1], SamplingParams(), 4)
    penalized = Sequence([1], SamplingParams(repetition_penalty=10.0), 4)
    picks = sample(logits, [greedy, penalized], {greedy.seq_id: None, penalized.seq_id: None}).picks()
    assert [p.token for p in picks] == [1, 0]  # token 1 seen in the prompt: 0.1 / 10 loses to 0.5
    assert picks[0].log_prob == pytest.approx(torch.log_softmax(logits[0], -1)[1].item())
    assert picks[0].top is None
    params = SamplingParams(do_sample=True, seed=7, temperature=1.5)
    draws = []
    for _ in range(2):
        seq = Sequence([0], params, 4)
        gen = make_generator(params, torch.device("cpu"))
        draws.append([sample(logits[:1], [seq], {seq.seq_id: gen}).picks()[0].token for _ in range(20)])
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
    row = filter_top_k_top_p(torch.tensor([4.0, 3.0, 2.0, 1.0]), top_k=3, top_p=0.7)
    assert torch.isfinite(row).tolist() == [True, True, False, False]
    row = filter_top_k_top_p(torch.tensor([4.0, 3.0, 2.0, 1.0]), top_k=0, top_p=1.0, min_p=0.3)
    assert torch.isfinite(row).tolist() == [True, True, False, False]  # e^-2 < 0.3 ≤ e^-1 of the top prob


def test_sampler_penalties_bias_and_top_logprobs():
    logits = torch.tensor([[2.0, 1.9, 0.0, -1.0]])
    raw = torch.log_softmax(logits[0], -1)

    def pick(**params) -> object:
        seq = Sequence([3], SamplingParams(**params), 4, output_ids=[0, 0])
        return sample(logits, [seq], {seq.seq_id: None}).picks()[0]

    assert pick().token == 0
    assert pick(frequency_penalty=0.1).token == 1  # 2.0 - 2 × 0.1 < 1.9
    assert pick(presence_penalty=0.05).token == 0  # 2.0 - 0.05 > 1.9
    assert pick(logit_bias={2: 5.0}).token == 2
    biased = pick(logit_bias={2: 5.0}, logprobs=2)
    # reported log-probs are the raw model's, before bias and penalties
    assert biased.log_prob == pytest.approx(raw[2].item())
    assert [t for t, _ in biased.top] == [0, 1] and biased.top[0][1] == pytest.approx(raw[0].item())
    assert pick(logprobs=0).top == []


def test_sampling_params_ranges():
    assert SamplingParams(seed=2**64 + 5).seed == 5  # reduced modulo 2^64
    for bad in ({"temperature": float("inf")}, {"repetition_penalty": 1e-300}, {"top_p": 0.0},
                {"logit_bias": {1: 1000.0}}, {"frequency_penalty": float("nan")}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_metrics_exposition():
    reg = Registry()
    counter = reg.add(Counter("x_total", "X."))
    hist = reg.add(Histogram("lat_seconds", "Latency.", (0.1, 1.0)))
    counter.inc(status="200")
    counter.inc(2, status="200")
    for value in (0.05, 0.5, 5):
        hist.observe(value)
    text = reg.render()
    assert 'x_total{status="200"} 3' in text
    assert 'lat_seconds_bucket{le="0.1"} 1' in text and 'lat_seconds_bucket{le="1"} 2' in text
    assert 'lat_seconds_bucket{le="+Inf"} 3' in text and "lat_seconds_count 3" in text
    assert "# TYPE lat_seconds histogram" in text


def test_engine_config_cli_then_env_then_default():
    env = {"MAX_BATCH_SIZE": "16", "MAX_CONCURRENT_REQUESTS": "50", "HF_MODEL_TRUST_REMOTE_CODE": "false"}
    assert engine_config({}, env={}) == EngineConfig()
    config = engine_config({"max_batch_size": 4}, env=env)
    assert (config.max_batch_size, config.max_queue, config.trust_remote_code) == (4, 50, False)
    assert engine_config({}, env={"OPTION_MAX_ROLLING_BATCH_SIZE": "32"}).max_batch_size == 32
    with pytest.raises(ConfigError, match="MAX_BATCH_SIZE='many'"):
        engine_config({}, env={"MAX_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="MAX_BATCH_SIZE='0'"):
        engine_config({}, env={"MAX_BATCH_SIZE": "0"})
    options = engine_config({}, env={"OPTION_MAX_MODEL_LEN": "512", "OPTION_KV_CACHE_GIB": "1.5"})
    assert (options.max_model_len, options.kv_cache_gib) == (512, 1.5)
    with pytest.raises(ConfigError, match="option.kv_cache_gib='lots'"):
        engine_config({}, env={"OPTION_KV_CACHE_GIB": "lots"})


def test_engine_config_prefill_token_budget_from_a_flag_or_the_environment():
    assert engine_config({}, env={}).max_prefill_tokens is None
    assert engine_config({"max_prefill_tokens": 512}, env={}).max_prefill_tokens == 512
    for name in ("MAX_BATCH_PREFILL_TOKENS", "OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS"):
        assert engine_config({}, env={name: "2048"}).max_prefill_tokens == 2048
    assert engine_config({"max_prefill_tokens": 512}, env={"MAX_BATCH_PREFILL_TOKENS": "2048"}).max_prefill_tokens == 512
    for cli, env, named in (({"max_prefill_tokens": 0}, {}, "--max-prefill-tokens='0'"),
                            ({}, {"MAX_BATCH_PREFILL_TOKENS": "0"}, "MAX_BATCH_PREFILL_TOKENS='0'"),
                            ({}, {"OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS": "1.5"},
                             "OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS='1.5'")):
        with pytest.raises(ConfigError, match=f"{named} .* expected a whole number ≥ 1"):
            engine_config(cli, env=env)
    with pytest.raises(ConfigError, match="max_prefill_tokens must be at least 1"):
        EngineConfig(max_prefill_tokens=0)


def test_engine_config_reads_the_serving_properties_shipped_with_the_model(tmp_path):
    (tmp_path / "serving.properties").write_text("option.max_rolling_batch_size=8\njob_queue_size=64\n")
    packaged = engine_config({}, env={}, model_dir=tmp_path)
    assert (packaged.max_batch_size, packaged.max_queue) == (8, 64)
    assert engine_config({}, env={"MAX_BATCH_SIZE": "4"}, model_dir=tmp_path).max_batch_size == 4  # env over file
    assert engine_config({"max_batch_size": 2}, env={"MAX_BATCH_SIZE": "4"}, model_dir=tmp_path).max_batch_size == 2
