"""Config hardening (issue 16): YAML bombs and non-UTF-8 files fail fast with a message that
names the file and echoes nothing big; secrets are redacted from every message; lmi-serve
flags, environment and files go through one validation path, each error one message, no
traceback (unless --debug)."""

from __future__ import annotations

import subprocess
import time

import pytest

from lmi_compile.recipe_loader import load_recipe
from lmi_runtime.config import load_serving_config
from lmi_runtime.config.engine_settings import engine_config
from lmi_runtime.errors import ConfigError, LmiError
from lmi_runtime.redact import redact

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefg", "bcdefgh")]
    + ["name: [*h,*h,*h,*h,*h,*h,*h,*h,*h]", "source: {uri: bundled://smollm2}"]
) + "\n"


def test_a_yaml_alias_bomb_fails_fast_without_printing_its_value(tmp_path, python, cli_env):
    assert len(BOMB) < 500  # ~10^9 values once expanded
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than 10000 values through YAML aliases"):
        load_recipe(recipe)
    assert time.monotonic() - start < 1
    done = subprocess.run([python, "-m", "lmi_compile", "plan", str(recipe)], env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "YAML aliases" in done.stderr
    assert len(done.stderr) < 1000 and "lol" not in done.stderr and "Traceback" not in done.stderr


def test_a_small_bomb_is_refused_too_and_long_values_are_cut(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text('a: &a ["x","x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                     "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\nsource: {uri: x}\n")
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_recipe(small)
    long = tmp_path / "long.yaml"
    long.write_text(f"name: {'y' * 5000}\nsource: {{uri: x}}\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(long)
    assert "(5002 characters)" in err.value.message and len(str(err.value)) < 400


def test_non_utf8_files_are_named_in_the_error(tmp_path, python, cli_env):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("name: café\nsource: {uri: bundled://smollm2}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 9"):
        load_recipe(recipe)
    props = tmp_path / "serving.properties"
    props.write_bytes("option.model_id=caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="serving.properties is not UTF-8 text"):
        load_serving_config({}, props)
    done = subprocess.run([python, "-m", "lmi_compile", "plan", "--properties", str(props)], env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not UTF-8" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("text, secret", [
    ("could not reach http://alice:s3cr3t-pw@minio.local:9000/bucket", "s3cr3t-pw"),
    ("endpoint https://AKIAIOSFODNN7EXAMPLE:x@host", "AKIAIOSFODNN7EXAMPLE"),
    ("option.tensor_parallel_degree='hf_abcdefghijklmnopqrstuvwxyz012345' is not valid", "hf_abcdefghijklmnopqrstuvwxyz012345"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
    ('{"password": "hunter2hunter2"}', "hunter2hunter2"),
    ("HF_TOKEN=abc123def456", "abc123def456"),
    ("key id ASIAY34FZKBOKMUTVV7A in use", "ASIAY34FZKBOKMUTVV7A"),
])
def test_redaction(text, secret):
    assert secret not in redact(text) and "***" in redact(text)
    assert secret not in str(LmiError(text, hint=text))


def test_redaction_leaves_ordinary_messages_alone():
    for text in ("set HF_TOKEN for gated models", "sha256 mismatch: rank0/model.safetensors",
                 "'parameters.max_new_tokens': Input should be greater than 0", '"bos_token_id": 1',
                 "kv_cache_tokens 16384",
                 "s3://bucket/prefix has no lmi-artifact.json", "max_new_tokens is 4096"):
        assert redact(text) == text


def test_credentials_in_the_endpoint_url_are_never_printed(smollm2_artifact, python, cli_env, s3_env):
    art = smollm2_artifact
    env = cli_env | s3_env | {"AWS_ENDPOINT_URL": "http://leaky:Pa55w0rd-xyz@127.0.0.1:9/"}
    done = subprocess.run([python, "-m", "lmi_compile", "publish", str(art), "s3://leak-test/p"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "Pa55w0rd-xyz" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_a_token_pasted_under_the_wrong_key_is_not_echoed(tmp_path):
    token = "hf_" + "Q" * 34
    props = tmp_path / "serving.properties"
    props.write_text(f"option.tensor_parallel_degree={token}\n")
    with pytest.raises(ConfigError) as err:
        load_serving_config({}, props)
    assert token not in str(err.value) and "option.tensor_parallel_degree" in err.value.message


def test_cli_flags_pass_the_same_validation_as_the_environment():
    for cli, env in (({"max_batch_size": 64, "max_queue": 8}, {}),
                     ({}, {"MAX_BATCH_SIZE": "64", "MAX_CONCURRENT_REQUESTS": "8"})):
        with pytest.raises(ConfigError, match="is below max_rolling_batch_size"):
            engine_config(cli, env=env)
    with pytest.raises(ConfigError, match="--dtype='float8' \\(command-line option\\) is not valid"):
        engine_config({"dtype": "float8"}, env={})
    with pytest.raises(ConfigError, match="OPTION_DTYPE='float8' \\(environment variable\\) is not valid"):
        engine_config({}, env={"OPTION_DTYPE": "float8"})
    for value in ("nan", "inf", "-1"):
        with pytest.raises(ConfigError, match="must be a finite number above 0"):
            engine_config({"kv_cache_gib": float(value)}, env={})


SERVE_ERRORS = [
    (["--port", "70000"], {}, "Invalid value for '--port'"),
    (["--device", "cuda:7"], {}, "--device cuda:7 was asked for, but this machine has"),
    (["--kv-cache-gib", "nan"], {}, "must be a finite number above 0"),
    (["--dtype", "float8"], {}, "--dtype='float8' (command-line option) is not valid"),
    ([], {"OPTION_MAX_MODEL_LEN": "1000000"}, "exceeds the model's max_position_embeddings 8192"),
    (["--max-batch-size", "64", "--max-concurrent-requests", "8"], {}, "is below max_rolling_batch_size"),
    (["--max-prefill-tokens", "0"], {}, "--max-prefill-tokens='0' (command-line option) is not valid"),
]


@pytest.mark.parametrize("args, env, message", SERVE_ERRORS, ids=lambda x: str(x)[:30])
def test_lmi_serve_errors_are_one_message_without_a_traceback(args, env, message, smollm2_dir, python, cli_env):
    done = subprocess.run([python, "-m", "lmi_runtime", str(smollm2_dir), "--host", "127.0.0.1", *args],
                          env=cli_env | env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in " ".join(done.stderr.split()) and "Traceback" not in done.stderr


def test_debug_shows_the_traceback(smollm2_dir, python, cli_env):
    done = subprocess.run([python, "-m", "lmi_runtime", str(smollm2_dir), "--kv-cache-gib", "nan", "--debug"],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" in done.stderr and "finite number" in done.stderr
