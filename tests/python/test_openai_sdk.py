"""The official `openai` Python SDK against a running sentinel-supervisor.

Environment:
  SENTINEL_URL      base URL of the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1
  SENTINEL_API_KEY  the API key the supervisor accepts (empty when it runs without keys)

`tests/python/run.sh` starts a supervisor and sets both.
"""

import os

import openai
import pytest

BASE_URL = os.environ.get("SENTINEL_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("SENTINEL_API_KEY", "")
# A real model on a small CPU budget can take a while; the SDK default (600 s) hides hangs.
TIMEOUT = float(os.environ.get("SENTINEL_TIMEOUT", "120"))


def make_client(api_key=None):
    return openai.OpenAI(
        base_url=BASE_URL,
        # The SDK refuses an empty key; any placeholder works when the supervisor has no keys.
        api_key=api_key if api_key is not None else (API_KEY or "no-key"),
        timeout=TIMEOUT,
        max_retries=0,
    )


@pytest.fixture(scope="module")
def client():
    return make_client()


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert models, "GET /v1/models returned no model"
    return models[0].id


def test_models_list_names_the_model(client):
    models = client.models.list().data
    assert len(models) >= 1
    assert isinstance(models[0].id, str) and models[0].id


def test_chat_completion(client, model):
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello in one short sentence."}],
        max_tokens=24,
        temperature=0,
    )
    assert response.object == "chat.completion"
    assert len(response.choices) == 1
    content = response.choices[0].message.content
    assert isinstance(content, str) and content.strip(), f"empty answer: {response!r}"
    assert response.usage is not None and response.usage.completion_tokens >= 1


def test_chat_completion_streaming(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    chunks = 0
    finish_reasons = []
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(pieces) >= 2, f"expected several content chunks, got {chunks} chunks: {pieces!r}"
    assert "".join(pieces).strip()
    assert finish_reasons, "the stream ended without a finish_reason"


def test_completion(client, model):
    response = client.completions.create(
        model=model,
        prompt="The three primary colors are red,",
        max_tokens=16,
        temperature=0,
    )
    assert len(response.choices) == 1
    text = response.choices[0].text
    assert isinstance(text, str) and text.strip(), f"empty completion: {response!r}"


@pytest.mark.skipif(not API_KEY, reason="the supervisor runs without API keys (SENTINEL_API_KEY unset)")
def test_wrong_key_raises_authentication_error():
    with pytest.raises(openai.AuthenticationError) as raised:
        make_client(api_key=API_KEY + "-wrong").models.list()
    assert raised.value.status_code == 401


def test_too_large_body_is_refused_with_413(client, model):
    huge = "a" * (9 * 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": huge}],
            max_tokens=1,
        )
    assert raised.value.status_code == 413
