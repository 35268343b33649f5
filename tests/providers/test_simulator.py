"""The offline model simulator speaks the OpenAI wire protocol well enough for the official SDK."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from providers.simulator import ModelSimulator, command_in_prompt
from tests.providers.conftest import SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
EXECUTE_TOOL = {
    "type": "function",
    "function": {
        "name": "execute",
        "description": "Run a shell command.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}


def sdk(simulator: ModelSimulator, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=simulator.base_url, api_key=api_key, max_retries=0)


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_sdk_streams_text_in_several_chunks_and_reassembles_it_exactly(simulator):
    text = "Hello from the simulator, streamed in small pieces."
    simulator.enqueue({"text": text, "chunk_chars": 5, "usage": {"prompt_tokens": 11, "completion_tokens": 7}})

    stream = sdk(simulator).chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) == -(-len(text) // 5)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 11
    assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].usage.total_tokens == 18
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_sdk_streams_a_tool_call_as_openai_does_and_reassembles_the_arguments(simulator):
    simulator.enqueue({"tool_calls": [{"name": "execute", "arguments": {"command": "echo hello && ls -la /tmp"}}]})

    stream = sdk(simulator).chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "go"}], tools=[EXECUTE_TOOL], stream=True
    )
    fragments = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]

    opening, rest = fragments[0], fragments[1:]
    assert opening.id.startswith("call_") and opening.type == "function"
    assert opening.function.name == "execute" and opening.function.arguments == ""
    assert len(rest) >= 2, "arguments arrive in several fragments"
    assert all(f.index == 0 and f.id is None and f.function.name is None for f in rest)
    assert json.loads("".join(f.function.arguments for f in rest)) == {"command": "echo hello && ls -la /tmp"}


def test_sdk_sees_finish_reason_tool_calls_after_a_tool_call(simulator):
    simulator.enqueue({"tool_calls": [{"name": "execute", "arguments": {"command": "pwd"}}]})

    chunks = list(
        sdk(simulator).chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "go"}], tools=[EXECUTE_TOOL], stream=True
        )
    )

    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_non_streaming_answer_is_a_chat_completion(simulator):
    simulator.enqueue(
        {"text": "Done.", "tool_calls": [{"name": "execute", "arguments": {"command": "ls"}, "id": "call_fixed"}]}
    )

    completion = sdk(simulator).chat.completions.create(model="sim", messages=[{"role": "user", "content": "go"}])

    message = completion.choices[0].message
    assert message.content == "Done." and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].id == "call_fixed"
    assert json.loads(message.tool_calls[0].function.arguments) == {"command": "ls"}
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_models_endpoint_lists_the_simulator_model(simulator):
    models = sdk(simulator).models.list()

    assert "airlock-simulator" in [m.id for m in models.data]


def test_requests_are_recorded_in_order_with_their_bodies(simulator):
    simulator.enqueue({"text": "one"}, {"text": "two"})
    client = sdk(simulator)

    first = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "first"}])
    second = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "second"}])

    assert (first.choices[0].message.content, second.choices[0].message.content) == ("one", "two")
    assert [r["messages"][0]["content"] for r in simulator.requests] == ["first", "second"]
    assert [r["model"] for r in simulator.requests] == ["a", "b"]


def test_without_the_configured_key_it_answers_401_with_openai_error_json(keyed_simulator):
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(keyed_simulator, api_key="sk-wrong-key-000000000000").models.list()
    response = httpx2.post(f"{keyed_simulator.base_url}/chat/completions", json={"model": "m", "messages": []})

    assert wrong.value.status_code == 401
    assert wrong.value.body["code"] == "invalid_api_key"
    assert "sk-wrong-key-0000" not in wrong.value.body["message"], "only the last characters are echoed"
    assert response.status_code == 401 and "didn't provide an API key" in response.json()["error"]["message"]
    assert keyed_simulator.requests == []


def test_with_the_configured_key_it_answers(keyed_simulator):
    keyed_simulator.enqueue({"text": "welcome"})

    completion = sdk(keyed_simulator, api_key=SECRET_KEY).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )

    assert completion.choices[0].message.content == "welcome"
    logged = json.dumps(keyed_simulator.request_log)
    assert SECRET_KEY not in logged and "Bearer ****7890" in logged


def test_error_turn_answers_with_the_status_vendor_json_and_retry_after(simulator):
    simulator.enqueue({"error": {"status": 429, "message": "rate limited", "retry_after": 7}})

    response = httpx2.post(
        f"{simulator.base_url}/chat/completions", json={"model": "m", "messages": [], "stream": True}
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "error": {"message": "rate limited", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }


def test_drop_after_chunks_closes_the_connection_mid_stream(simulator):
    simulator.enqueue({"text": "a long answer that never finishes", "drop_after_chunks": 3})

    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in sdk(simulator).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(chunk)

    assert len(received) == 3


def test_delay_holds_back_the_first_byte(simulator):
    simulator.enqueue({"text": "slow", "delay": 0.3})

    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(base_url=simulator.base_url, api_key="x", max_retries=0, timeout=0.1).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )


def test_control_endpoints_script_and_inspect_it_over_http(simulator):
    root = simulator.base_url.removesuffix("/v1")

    queued = post_json(f"{root}/_simulator/script", {"turns": [{"text": "scripted over HTTP"}]})
    completion = sdk(simulator).chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    recorded = get_json(f"{root}/_simulator/requests")
    post_json(f"{root}/_simulator/reset", {})

    assert queued == {"queued": 1}
    assert completion.choices[0].message.content == "scripted over HTTP"
    assert recorded["requests"][0]["body"]["messages"] == [{"role": "user", "content": "q"}]
    assert simulator.requests == [] and simulator.pending_turns == 0


def test_control_endpoint_rejects_a_malformed_script_with_400(simulator):
    root = simulator.base_url.removesuffix("/v1")

    with pytest.raises(urllib.error.HTTPError) as error:
        post_json(f"{root}/_simulator/script", {"turns": "not a list"})

    assert error.value.code == 400
    assert "list of turn objects" in json.loads(error.value.read())["error"]["message"]


@pytest.mark.parametrize(
    ("prompt", "command"),
    [
        ("run `ls -la`", "ls -la"),
        ("Could you please run ```echo hi``` for me", "echo hi"),
        ("run: git status", "git status"),
        ("RUN: pwd", "pwd"),
        ("$ uname -a", "uname -a"),
        ("what is a monad?", None),
        ("run:   ", None),
    ],
)
def test_default_responder_finds_the_command_in_a_prompt(prompt, command):
    assert command_in_prompt(prompt) == command


def test_default_responder_calls_execute_for_a_command_in_backticks(simulator):
    chunks = list(
        sdk(simulator).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "please run `ls -la`"}], tools=[EXECUTE_TOOL], stream=True
        )
    )

    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "execute"
    assert json.loads("".join(tc.function.arguments for tc in calls)) == {"command": "ls -la"}


def test_default_responder_summarizes_a_tool_result_quoting_its_first_lines(simulator):
    output = "\n".join(f"line {n}" for n in range(1, 31))
    messages = [
        {"role": "user", "content": "run `seq 30`"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "execute", "arguments": '{"command": "x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": output},
    ]

    completion = sdk(simulator).chat.completions.create(model="m", messages=messages, tools=[EXECUTE_TOOL])

    text = completion.choices[0].message.content
    assert "I ran `x`" in text and "line 1\n" in text and "line 10" in text
    assert "line 11" not in text and "20 more lines" in text
    assert completion.choices[0].message.tool_calls is None


def test_default_responder_explains_itself_and_echoes_the_prompt(simulator):
    completion = sdk(simulator).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is the meaning of life?"}], tools=[EXECUTE_TOOL]
    )

    text = completion.choices[0].message.content
    assert "offline simulator" in text and "What is the meaning of life?" in text
    assert "run `ls -la`" in text


def test_default_responder_does_not_call_a_tool_the_request_does_not_offer(simulator):
    completion = sdk(simulator).chat.completions.create(model="m", messages=[{"role": "user", "content": "$ ls"}])

    assert completion.choices[0].message.tool_calls is None
    assert "no `execute` tool" in completion.choices[0].message.content


def test_cli_prints_its_base_url_answers_and_stops_on_sigterm(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "from the script file"}]))
    process = subprocess.Popen(
        [sys.executable, "-m", "providers.simulator", "--port", "0", "--script", str(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = process.stdout.readline()
        base_url = re.search(r"http://127\.0\.0\.1:\d+/v1", line).group(0)
        completion = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "from the script file"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_cli_with_an_unreadable_script_exits_non_zero_with_a_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")

    result = subprocess.run(
        [sys.executable, "-m", "providers.simulator", "--port", "0", "--script", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    assert result.returncode != 0
    assert "is not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_anthropic_stream_follows_the_messages_event_order_with_split_tool_input(simulator):
    simulator.enqueue(
        {
            "thinking": "plan",
            "text": "Sure.",
            "tool_calls": [{"id": "toolu_9", "name": "execute", "arguments": {"command": "ls -la /tmp"}}],
        }
    )
    client = anthropic.Anthropic(base_url=simulator.root_url, api_key="unused", max_retries=0)

    events = list(
        client.messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "go"}], stream=True)
    )

    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert {d.type for d in deltas} == {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"}
    fragments = [d.partial_json for d in deltas if d.type == "input_json_delta"]
    assert len(fragments) >= 2 and json.loads("".join(fragments)) == {"command": "ls -la /tmp"}
    assert events[-2].delta.stop_reason == "tool_use" and events[-2].usage.output_tokens > 0


def test_anthropic_errors_use_anthropic_error_json_and_retry_after(simulator):
    simulator.enqueue({"error": {"status": 429, "message": "slow down", "retry_after": 4}})

    response = httpx2.post(f"{simulator.root_url}/v1/messages", json={"model": "m", "messages": [], "stream": True})

    assert response.status_code == 429 and response.headers["retry-after"] == "4"
    assert response.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def test_azure_deployment_path_answers_the_azure_sdk_with_the_api_key_header(keyed_simulator):
    keyed_simulator.enqueue({"text": "azure says hi"})
    client = openai.AzureOpenAI(
        azure_endpoint=keyed_simulator.root_url, api_version="2024-10-21", api_key=SECRET_KEY, max_retries=0
    )

    completion = client.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "hi"}])
    refused = httpx2.post(
        f"{keyed_simulator.root_url}/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21",
        json={"messages": []},
        headers={"api-key": "wrong-key-000000000"},
    )

    assert completion.choices[0].message.content == "azure says hi"
    [logged] = keyed_simulator.request_log
    assert logged["path"] == "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    assert logged["headers"]["api-key"] == "****7890"
    assert refused.status_code == 401 and "Access denied" in refused.json()["error"]["message"]
