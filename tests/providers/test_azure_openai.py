"""OpenAI and Azure OpenAI kinds: the deployment path, the api-key header, extra headers and model options."""

from __future__ import annotations

import pytest

from portal.crypto import encrypt_secret
from providers.clients import CallSummary, ModelCallError, ReasoningDelta, TextDelta, TurnEnd, Usage, stream_turn
from providers.models import LanguageModel
from tests.factories import LanguageModelFactory
from tests.providers.conftest import EXECUTE, SECRET_KEY

PROMPT = [{"role": "user", "content": "hello"}]


async def collect(model: LanguageModel, **kwargs) -> list:
    """The events of one turn, without the CallSummary."""
    return [
        event
        async for event in stream_turn(model=model, system="Be brief.", messages=PROMPT, tools=[EXECUTE], **kwargs)
        if not isinstance(event, CallSummary)
    ]


@pytest.fixture
def azure(org, keyed_simulator) -> LanguageModel:
    """An Azure OpenAI provider (endpoint = the simulator's root) and a deployment named prod-gpt4o."""
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="Azure",
        provider__kind="azure-openai",
        provider__base_url=keyed_simulator.root_url,
        provider__api_version="2024-10-21",
        provider__api_key_encrypted=encrypt_secret(SECRET_KEY),
        provider__extra_headers={"X-Team": "payments", "X-Cost-Center": "cc-42"},
        identifier="prod-gpt4o",
        max_output_tokens=800,
        options={"temperature": 0.1, "reasoning_effort": "low"},
    )


@pytest.fixture
def azure_without_version(org, keyed_simulator) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="Azure",
        provider__kind="azure-openai",
        provider__base_url=keyed_simulator.root_url,
        provider__api_key_encrypted=encrypt_secret(SECRET_KEY),
    )


@pytest.fixture
def openai_model(org, keyed_simulator) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="OpenAI",
        provider__kind="openai",
        provider__base_url=keyed_simulator.base_url,
        provider__api_key_encrypted=encrypt_secret(SECRET_KEY),
        provider__extra_headers={"OpenAI-Project": "proj_abc"},
        identifier="gpt-sim",
        max_output_tokens=256,
    )


@pytest.fixture
def gateway_model(org, simulator) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__base_url=simulator.base_url,
        provider__extra_headers={"X-Gateway-Route": "gpu-pool-b"},
        max_output_tokens=300,
    )


async def test_azure_calls_the_deployment_path_with_the_api_key_header(azure, keyed_simulator):
    keyed_simulator.enqueue({"text": "from Azure", "usage": {"prompt_tokens": 9, "completion_tokens": 2}})

    events = await collect(azure, correlation={"session_id": "s-1", "user_id": "5"})

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "from Azure"
    assert events[-2:] == [Usage(9, 2), TurnEnd("end_turn")]
    [logged] = keyed_simulator.request_log
    assert logged["path"] == "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    assert logged["headers"]["api-key"] == "****7890" and "authorization" not in logged["headers"]
    assert logged["headers"]["x-airlock-session-id"] == "s-1"


async def test_extra_headers_arrive_on_every_call(azure, keyed_simulator):
    keyed_simulator.enqueue({"text": "one"}, {"text": "two"})

    await collect(azure)
    await collect(azure)

    for logged in keyed_simulator.request_log:
        assert logged["headers"]["x-team"] == "payments" and logged["headers"]["x-cost-center"] == "cc-42"


async def test_model_options_become_request_parameters(azure, keyed_simulator):
    keyed_simulator.enqueue({"text": "ok"})

    await collect(azure)

    body = keyed_simulator.requests[0]
    assert body["temperature"] == 0.1 and body["reasoning_effort"] == "low"
    assert body["max_completion_tokens"] == 800 and "max_tokens" not in body


async def test_azure_without_api_version_says_to_set_one(azure_without_version, keyed_simulator):
    with pytest.raises(ModelCallError) as error:
        await collect(azure_without_version)

    assert "has no API version" in str(error.value) and keyed_simulator.requests == []


async def test_openai_kind_sends_bearer_key_extra_headers_and_cached_tokens_apart(openai_model, keyed_simulator):
    keyed_simulator.enqueue(
        {"text": "hi", "usage": {"prompt_tokens": 100, "completion_tokens": 4, "cache_read_tokens": 900}}
    )

    events = await collect(openai_model)

    assert Usage(input_tokens=100, output_tokens=4, cache_read_tokens=900) in events
    [logged] = keyed_simulator.request_log
    assert logged["path"] == "/v1/chat/completions" and logged["headers"]["authorization"] == "Bearer ****7890"
    assert logged["headers"]["openai-project"] == "proj_abc"
    assert logged["body"]["max_completion_tokens"] == 256


async def test_gateway_extra_headers_and_reasoning_content_arrive(gateway_model, simulator):
    simulator.enqueue({"thinking": "think first", "text": "answer"})

    events = await collect(gateway_model)

    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "think first"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "answer"
    [logged] = simulator.request_log
    assert logged["headers"]["x-gateway-route"] == "gpu-pool-b" and logged["body"]["max_tokens"] == 300
