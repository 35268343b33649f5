"""The connectivity check of the google, bedrock and azure-openai kinds, through the official SDKs over loopback HTTP.

Each vendor is checked against its loopback fake (the Gemini API, Bedrock's runtime and control plane with SigV4
verified, the simulator's Azure OpenAI routes) for: success, a rejected key, a model the endpoint does not serve,
and an endpoint where nothing listens. No key ever shows in the result, its JSON, the audit rows or the logs.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest

from audit.models import AuditEvent
from organizations.models import Organization
from providers.checks import CheckResult, bedrock_control_endpoint, provider_check
from providers.models import LanguageModel, Provider
from providers.services import model_create, provider_create
from providers.simulator import ModelSimulator
from tests.fakes.bedrock_server import DEFAULT_FOUNDATION_MODELS, FakeBedrock
from tests.fakes.gemini_server import FakeGemini

GEMINI_KEY = "AIzaSyCHECK-gemini-CANARY-0123456789ab"
WRONG_GEMINI_KEY = "AIzaSyWRONG-gemini-CANARY-9876543210zz"
AWS_KEY_ID = "AKIAAIRLOCKCHECK0001"
AWS_SECRET = "checkSECRETaccessKEY/airlock+CANARY01234"
WRONG_AWS_SECRET = "wrongSECRETaccessKEY/airlock+CANARY5555"
ENV_KEY_ID = "AKIAAIRLOCKAMBIENT009"
ENV_SECRET = "ambientSECRETaccessKEY/airlock+CANARY987"
AZURE_KEY = "azure-CANARY-0123456789abcdef0123abcd"
WRONG_AZURE_KEY = "azure-WRONG-CANARY-fedcba9876543210ffff"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
NETWORK_STEPS = ["credentials", "dns", "tcp"]


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No proxy, no vendor key or AWS setting of the machine, and no instance-metadata lookups (loopback only)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_API_VERSION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_BEDROCK",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
        "OPENAI_API_KEY",
        "AZURE_OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG, the SDKs' and their HTTP stacks' included."""
    import botocore  # noqa: F401 - create their loggers before raising them to DEBUG
    import httpx2  # noqa: F401
    import openai  # noqa: F401
    from google import genai  # noqa: F401

    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    """A Gemini API that accepts GEMINI_KEY."""
    with FakeGemini(api_key=GEMINI_KEY) as server:
        yield server


@pytest.fixture
def bedrock() -> Iterator[FakeBedrock]:
    """A Bedrock runtime and control plane that know AWS_KEY_ID and ENV_KEY_ID."""
    with FakeBedrock(credentials={AWS_KEY_ID: AWS_SECRET, ENV_KEY_ID: ENV_SECRET}) as server:
        yield server


@pytest.fixture
def azure() -> Iterator[ModelSimulator]:
    """The simulator's Azure OpenAI routes, accepting AZURE_KEY."""
    with ModelSimulator(api_key=AZURE_KEY) as server:
        yield server


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gemini_provider(org: Organization, base_url: str, *, key: str = GEMINI_KEY) -> Provider:
    """A google provider created through the service (the key stored encrypted)."""
    return provider_create(actor=None, organization=org, name="Gemini", kind="google", base_url=base_url, api_key=key)


def bedrock_provider(
    org: Organization, base_url: str, *, secret: str = AWS_SECRET, key_id: str = AWS_KEY_ID, **fields: object
) -> Provider:
    """A bedrock provider with a stored access key, pointed at a loopback endpoint."""
    return provider_create(
        actor=None,
        organization=org,
        name="Bedrock",
        kind="bedrock",
        base_url=base_url,
        region="us-east-1",
        aws_access_key_id=key_id,
        api_key=secret,
        **fields,
    )


def azure_provider(org: Organization, endpoint: str, *, key: str = AZURE_KEY) -> Provider:
    """An azure-openai provider whose endpoint is a loopback root."""
    return provider_create(
        actor=None,
        organization=org,
        name="Azure",
        kind="azure-openai",
        base_url=endpoint,
        api_key=key,
        api_version="2024-10-21",
    )


def model_of(provider: Provider, identifier: str) -> LanguageModel:
    """A model of the provider."""
    return model_create(
        actor=None,
        organization=provider.organization,
        provider=provider,
        identifier=identifier,
        display_name=identifier,
        context_limit=32_000,
    )


def failed_step(result: CheckResult):
    """The step that stopped the check."""
    return next(step for step in result.steps if not step.ok)


def assert_passed(result: CheckResult, names: list[str]) -> None:
    """Every step ran, in order, and passed; the audit row says success."""
    assert result.ok, result.summary
    assert [step.name for step in result.steps] == names
    assert all(step.ok for step in result.steps)
    event = AuditEvent.objects.filter(action="provider.checked").latest("id")
    assert event.outcome == "success" and [step["name"] for step in event.data["steps"]] == names


def assert_failed_at(result: CheckResult, name: str) -> str:
    """The check stopped at `name` (the steps before it passed); the audit row says failure. Returns the detail."""
    step = failed_step(result)
    assert step.name == name, result.steps
    assert result.steps[-1] is step and all(other.ok for other in result.steps[:-1])
    assert not result.ok and f"the {name} step failed" in result.summary
    event = AuditEvent.objects.filter(action="provider.checked").latest("id")
    assert event.outcome == "failure" and step.detail in event.error
    return step.detail


def assert_never_leaked(result: CheckResult, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No secret (nor all of it but its last four characters) in the result, its JSON, the audit rows or the logs."""
    texts = [result.summary, json.dumps(result.as_dict())]
    texts.append(json.dumps(list(AuditEvent.objects.values()), default=str))
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    for secret in secrets:
        for text in texts:
            assert secret[:-4] not in text, f"the secret leaked: {text[max(0, text.find(secret[:-4]) - 80) :][:240]}"


# --- Google (google-genai) --------------------------------------------------------------------------------------


def test_google_passes_every_step_listing_models_and_getting_the_model(org, owner, gemini, every_log):
    provider = gemini_provider(org, gemini.base_url)
    model = model_of(provider, "gemini-2.5-flash")

    result = provider_check(actor=owner, provider=provider, model=model)

    assert_passed(result, [*NETWORK_STEPS, "api", "model"])
    details = {step.name: step.detail for step in result.steps}
    assert details["credentials"] == f"key ****{GEMINI_KEY[-4:]} decrypted"
    assert details["api"] == "the key was accepted (models list)"
    assert details["model"] == "model gemini-2.5-flash is served"
    paths = [entry["path"] for entry in gemini.request_log]
    assert paths == ["/v1/models?pageSize=1", "/v1/models/gemini-2.5-flash"]
    assert all(entry["headers"]["x-goog-api-key"] == "****" + GEMINI_KEY[-4:] for entry in gemini.request_log)
    assert_never_leaked(result, every_log, GEMINI_KEY)


def test_google_without_a_model_lists_models_only(org, owner, gemini):
    result = provider_check(actor=owner, provider=gemini_provider(org, gemini.base_url))

    assert_passed(result, [*NETWORK_STEPS, "api"])
    assert [entry["path"] for entry in gemini.request_log] == ["/v1/models?pageSize=1"]


def test_google_uses_the_providers_api_version_as_the_agent_does(org, owner, gemini):
    provider = gemini_provider(org, gemini.base_url)
    Provider.objects.filter(pk=provider.pk).update(api_version="v1beta")
    provider.refresh_from_db()

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "gemini-2.5-pro"))

    assert result.ok, result.summary
    paths = [entry["path"] for entry in gemini.request_log]
    assert paths == ["/v1beta/models?pageSize=1", "/v1beta/models/gemini-2.5-pro"]


def test_google_invalid_key_says_the_key_was_rejected_and_never_shows_it(org, owner, gemini, every_log):
    provider = gemini_provider(org, gemini.base_url, key=WRONG_GEMINI_KEY)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "gemini-2.5-flash"))

    detail = assert_failed_at(result, "api")
    assert detail.startswith("400: the API key was rejected. Enter the current Gemini API key again")
    assert "API key not valid" in detail
    assert_never_leaked(result, every_log, WRONG_GEMINI_KEY, GEMINI_KEY)


def test_google_401_says_the_key_was_rejected(org, owner, gemini, every_log):
    gemini.get_error = {"status": 401, "message": "Request had invalid authentication credentials."}

    result = provider_check(actor=owner, provider=gemini_provider(org, gemini.base_url))

    assert assert_failed_at(result, "api").startswith("401: the API key was rejected")
    assert_never_leaked(result, every_log, GEMINI_KEY)


def test_google_403_says_the_key_was_refused_and_masks_a_message_that_echoes_it(org, owner, gemini, every_log):
    gemini.get_error = {
        "status": 403,
        "message": "Requests to this API are blocked for key {key}.",
        "reason": "API_KEY_SERVICE_BLOCKED",
    }

    result = provider_check(actor=owner, provider=gemini_provider(org, gemini.base_url))

    detail = assert_failed_at(result, "api")
    assert detail.startswith("403: the API key was refused for the Gemini API")
    assert "Generative Language API enabled" in detail and "restrictions" in detail
    assert "(the endpoint said: Requests to this API are blocked for key ****.)" in detail
    assert_never_leaked(result, every_log, GEMINI_KEY)


def test_google_model_not_served_fails_at_the_model_step_naming_it(org, owner, gemini):
    gemini.served_models = {"gemini-2.5-flash"}
    provider = gemini_provider(org, gemini.base_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "gemini-9-ultra"))

    detail = assert_failed_at(result, "model")
    assert detail.startswith("404: model gemini-9-ultra is not served by this endpoint: check the model identifier")
    assert result.steps[-2].name == "api" and result.steps[-2].ok


def test_google_base_url_with_a_version_path_fails_at_the_api_step_pointing_at_the_base_url(org, owner, gemini):
    provider = gemini_provider(org, gemini.base_url + "/v1beta")

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "gemini-2.5-flash"))

    detail = assert_failed_at(result, "api")
    assert detail.startswith("404: the endpoint has no such API: check the base URL: it is the API's root")
    assert "without a version path" in detail and "OpenAI-compatible" not in detail


def test_google_endpoint_not_listening_fails_at_tcp(org, owner):
    port = closed_port()

    result = provider_check(actor=owner, provider=gemini_provider(org, f"http://127.0.0.1:{port}"))

    detail = assert_failed_at(result, "tcp")
    assert f"TCP connect to 127.0.0.1:{port} was refused: nothing listens on that port" in detail


def test_google_without_a_stored_key_never_falls_back_to_the_servers_environment(org, owner, gemini, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", GEMINI_KEY)
    provider = Provider.objects.create(organization=org, name="Keyless", kind="google", base_url=gemini.base_url)

    result = provider_check(actor=owner, provider=provider)

    assert "No API key is stored" in assert_failed_at(result, "api")
    assert gemini.request_log == []


def test_google_stays_on_the_gemini_api_when_the_server_is_set_up_for_vertex(org, owner, gemini, monkeypatch):
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")

    result = provider_check(actor=owner, provider=gemini_provider(org, gemini.base_url))

    assert result.ok, result.summary
    assert [entry["path"] for entry in gemini.request_log] == ["/v1/models?pageSize=1"]


# --- AWS Bedrock (boto3) ----------------------------------------------------------------------------------------


def test_bedrock_with_a_model_passes_every_step_with_one_signed_converse_call(org, owner, bedrock, every_log):
    provider = bedrock_provider(org, bedrock.base_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    assert_passed(result, [*NETWORK_STEPS, "api", "model"])
    assert result.steps[-1].detail == f"model {BEDROCK_MODEL} answered (Converse)"
    [entry] = bedrock.request_log
    assert entry["method"] == "POST" and entry["path"].endswith("/converse")
    assert entry["body"]["inferenceConfig"] == {"maxTokens": 1}
    assert bedrock.models_seen == [BEDROCK_MODEL] and bedrock.key_ids_seen == [AWS_KEY_ID]
    assert "/bedrock/aws4_request" in entry["headers"]["authorization"]
    assert_never_leaked(result, every_log, AWS_SECRET)


def test_bedrock_without_a_model_lists_foundation_models_on_the_gateway(org, owner, bedrock, every_log):
    result = provider_check(actor=owner, provider=bedrock_provider(org, bedrock.base_url))

    assert_passed(result, [*NETWORK_STEPS, "api"])
    assert result.steps[-1].detail == (
        f"the credentials were accepted; ListFoundationModels lists {len(DEFAULT_FOUNDATION_MODELS)} text model(s)"
    )
    [entry] = bedrock.request_log
    assert entry["method"] == "GET" and entry["path"] == "/foundation-models?byOutputModality=TEXT"
    assert "/us-east-1/bedrock/aws4_request" in entry["headers"]["authorization"]
    assert_never_leaked(result, every_log, AWS_SECRET)


def test_bedrock_wrong_secret_is_an_invalid_signature_in_aws_words(org, owner, bedrock, every_log):
    provider = bedrock_provider(org, bedrock.base_url, secret=WRONG_AWS_SECRET)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    detail = assert_failed_at(result, "api")
    assert detail.startswith("403 InvalidSignatureException: AWS rejected the stored key: the request signature")
    assert "secret access key does not belong to the access key id" in detail
    assert "enter the secret access key again" in detail
    assert_never_leaked(result, every_log, WRONG_AWS_SECRET, AWS_SECRET)


def test_bedrock_unknown_access_key_id_is_an_unrecognized_client(org, owner, bedrock, every_log):
    provider = bedrock_provider(org, bedrock.base_url, key_id="AKIAAIRLOCKUNKNOWN99")

    result = provider_check(actor=owner, provider=provider)

    detail = assert_failed_at(result, "api")
    assert detail.startswith("403 UnrecognizedClientException: AWS rejected the stored key")
    assert "AWS does not know the access key id" in detail and "security token included in the request" in detail
    assert_never_leaked(result, every_log, AWS_SECRET)


def test_bedrock_model_id_aws_calls_invalid_fails_at_the_model_step_naming_it(org, owner, bedrock):
    bedrock.served_models = {BEDROCK_MODEL}
    provider = bedrock_provider(org, bedrock.base_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "anthropic.claude-9-v1:0"))

    detail = assert_failed_at(result, "model")
    assert detail.startswith(
        "400 ValidationException: model anthropic.claude-9-v1:0 is not served by Bedrock in us-east-1: check the "
        "model id (or inference profile) and the region"
    )
    assert "The provided model identifier is invalid" in detail
    assert result.steps[-2].detail == "the credentials were accepted (AWS answered ValidationException about the model)"


def test_bedrock_resource_not_found_fails_at_the_model_step_with_404(org, owner, bedrock):
    bedrock.enqueue({"error": {"status": 404, "message": "This model version has reached the end of its life."}})
    provider = bedrock_provider(org, bedrock.base_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "anthropic.claude-v2"))

    detail = assert_failed_at(result, "model")
    assert detail.startswith("404 ResourceNotFoundException: model anthropic.claude-v2 is not served by Bedrock")
    assert "end of its life" in detail


def test_bedrock_access_denied_on_the_model_says_iam_or_model_access(org, owner, bedrock):
    bedrock.enqueue({"error": {"status": 403}})
    provider = bedrock_provider(org, bedrock.base_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    detail = assert_failed_at(result, "model")
    assert detail.startswith("403 AccessDeniedException: the credentials are valid, but the IAM policy")
    assert f"bedrock:InvokeModel on {BEDROCK_MODEL}" in detail and "model access" in detail


def test_bedrock_access_denied_on_the_control_plane_names_list_foundation_models(org, owner, bedrock):
    bedrock.control_error = {"status": 403, "code": "AccessDeniedException", "message": "User is not authorized."}

    result = provider_check(actor=owner, provider=bedrock_provider(org, bedrock.base_url))

    detail = assert_failed_at(result, "api")
    assert "the credentials are valid" in detail and "bedrock:ListFoundationModels" in detail


def test_bedrock_check_makes_a_single_attempt(org, owner, bedrock):
    bedrock.enqueue({"error": {"status": 500}}, {"text": "a retry would get this"})
    provider = bedrock_provider(org, bedrock.base_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    assert assert_failed_at(result, "api").startswith("500 InternalServerException: Bedrock has a problem of its own")
    assert len(bedrock.request_log) == 1 and bedrock.pending_turns == 1


def test_bedrock_sends_the_providers_extra_headers_as_the_agent_does(org, owner, bedrock):
    provider = bedrock_provider(org, bedrock.base_url, extra_headers={"X-Gateway-Route": "bedrock-east"})

    listed = provider_check(actor=owner, provider=provider)
    conversed = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    assert listed.ok and conversed.ok, (listed.summary, conversed.summary)
    assert [entry["headers"].get("x-gateway-route") for entry in bedrock.request_log] == ["bedrock-east"] * 2


def test_bedrock_ambient_credentials_come_from_the_servers_environment(org, owner, bedrock, monkeypatch, every_log):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    provider = provider_create(
        actor=None,
        organization=org,
        name="Role",
        kind="bedrock",
        base_url=bedrock.base_url,
        region="us-east-1",
        use_ambient_credentials=True,
    )

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    assert_passed(result, [*NETWORK_STEPS, "api", "model"])
    assert result.steps[0].detail == "the server's ambient AWS credentials (IAM role)"
    assert bedrock.key_ids_seen == [ENV_KEY_ID]
    assert_never_leaked(result, every_log, ENV_SECRET)


def test_bedrock_ambient_credentials_missing_says_to_attach_a_role(org, owner, bedrock):
    provider = provider_create(
        actor=None,
        organization=org,
        name="Role",
        kind="bedrock",
        base_url=bedrock.base_url,
        region="us-east-1",
        use_ambient_credentials=True,
    )

    result = provider_check(actor=owner, provider=provider)

    assert assert_failed_at(result, "api").startswith("No AWS credentials were found on the server")
    assert bedrock.request_log == []


def test_bedrock_without_a_stored_access_key_fails_at_the_credentials_step(org, owner, bedrock):
    provider = Provider.objects.create(
        organization=org, name="Half", kind="bedrock", base_url=bedrock.base_url, region="us-east-1"
    )

    result = provider_check(actor=owner, provider=provider)

    assert assert_failed_at(result, "credentials").startswith("No AWS access key is stored")
    assert bedrock.request_log == []


def test_bedrock_endpoint_not_listening_fails_at_tcp(org, owner):
    port = closed_port()
    provider = bedrock_provider(org, f"http://127.0.0.1:{port}")

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, BEDROCK_MODEL))

    assert f"TCP connect to 127.0.0.1:{port} was refused" in assert_failed_at(result, "tcp")


@pytest.mark.parametrize(
    ("base_url", "control"),
    [
        ("", None),
        ("https://bedrock-runtime.eu-central-1.amazonaws.com", "https://bedrock.eu-central-1.amazonaws.com"),
        ("https://bedrock-runtime-fips.us-east-1.amazonaws.com", "https://bedrock-fips.us-east-1.amazonaws.com"),
        ("https://vpce-0abc-xyz.bedrock-runtime.us-east-1.vpce.amazonaws.com", None),
        ("http://bedrock-gateway.internal:8080", "http://bedrock-gateway.internal:8080"),
    ],
)
def test_the_control_plane_endpoint_sits_beside_the_runtime_one(base_url: str, control: str | None):
    assert bedrock_control_endpoint(Provider(kind="bedrock", base_url=base_url, region="us-east-1")) == control


# --- Azure OpenAI (openai SDK's AzureOpenAI) --------------------------------------------------------------------


def test_azure_passes_every_step_with_a_one_token_call_on_the_deployment(org, owner, azure, every_log):
    provider = azure_provider(org, azure.root_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "prod-gpt4o"))

    assert_passed(result, [*NETWORK_STEPS, "api", "model"])
    assert result.steps[-1].detail == "deployment prod-gpt4o answered"
    [entry] = azure.request_log
    assert entry["path"] == "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    assert entry["headers"]["api-key"] == "****" + AZURE_KEY[-4:]
    # As the agent's own calls: reasoning deployments refuse max_tokens.
    assert entry["body"]["max_completion_tokens"] == 1 and "max_tokens" not in entry["body"]
    assert_never_leaked(result, every_log, AZURE_KEY)


def test_azure_without_a_model_lists_the_resources_models(org, owner, azure):
    result = provider_check(actor=owner, provider=azure_provider(org, azure.root_url))

    assert_passed(result, [*NETWORK_STEPS, "api"])
    assert result.steps[-1].detail == "the key was accepted; the endpoint lists 1 model(s)"


def test_azure_wrong_key_says_the_key_was_rejected_and_never_shows_it(org, owner, azure, every_log):
    provider = azure_provider(org, azure.root_url, key=WRONG_AZURE_KEY)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "prod-gpt4o"))

    detail = assert_failed_at(result, "api")
    assert detail.startswith("401: the API key was rejected. Enter the current key of this Azure resource again")
    assert "invalid subscription key" in detail
    assert_never_leaked(result, every_log, WRONG_AZURE_KEY, AZURE_KEY)


def test_azure_403_on_the_deployment_says_the_key_may_not_call_it(org, owner, azure, every_log):
    azure.enqueue(
        {"error": {"status": 403, "message": "Public access is disabled. Please configure private endpoint."}}
    )
    provider = azure_provider(org, azure.root_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "prod-gpt4o"))

    detail = assert_failed_at(result, "model")
    assert detail.startswith("403: the key was accepted but may not call the deployment")
    assert "Public access is disabled" in detail
    assert_never_leaked(result, every_log, AZURE_KEY)


def test_azure_deployment_not_found_fails_at_the_model_step_naming_it(org, owner, azure):
    azure.enqueue(
        {
            "error": {
                "status": 404,
                "code": "DeploymentNotFound",
                "message": "The API deployment for this resource does not exist. If you created the deployment "
                "within the last 5 minutes, please wait a moment and try again.",
            }
        }
    )
    provider = azure_provider(org, azure.root_url)

    result = provider_check(actor=owner, provider=provider, model=model_of(provider, "gpt-4o-typo"))

    detail = assert_failed_at(result, "model")
    assert detail.startswith("404: deployment gpt-4o-typo is not served by this endpoint: the model identifier must")
    assert "Azure deployment name" in detail and "last 5 minutes" in detail


def test_azure_endpoint_with_an_openai_path_fails_at_the_api_step_pointing_at_the_base_url(org, owner, azure):
    provider = azure_provider(org, azure.root_url + "/openai")

    result = provider_check(actor=owner, provider=provider)

    detail = assert_failed_at(result, "api")
    assert detail.startswith("404: the endpoint has no such API: check the base URL: it is the resource's endpoint")
    assert "without /openai" in detail and "OpenAI-compatible" not in detail


def test_azure_endpoint_not_listening_fails_at_tcp(org, owner):
    port = closed_port()

    result = provider_check(actor=owner, provider=azure_provider(org, f"http://127.0.0.1:{port}"))

    assert f"TCP connect to 127.0.0.1:{port} was refused" in assert_failed_at(result, "tcp")


def test_azure_without_an_api_version_fails_in_words_instead_of_crashing(org, owner, azure):
    provider = azure_provider(org, azure.root_url)
    Provider.objects.filter(pk=provider.pk).update(api_version="")
    provider.refresh_from_db()

    result = provider_check(actor=owner, provider=provider)

    assert "needs an API version" in assert_failed_at(result, "api")
