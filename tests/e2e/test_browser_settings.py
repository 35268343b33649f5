"""A real browser: the owner adds an OpenAI-compatible provider, presses Test, sees every step pass, adds a model."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.livesrv import LivePortal

pytestmark = pytest.mark.timeout(120)

SETTINGS_SCREENSHOT = "/tmp/airlock-settings.png"
MODELS_SCREENSHOT = "/tmp/airlock-settings-models.png"
KEY = "sk-browser-SECRET-7777-beef"


def sign_in(page: Page, portal: LivePortal) -> None:
    """Sign in through the login form as the portal's owner."""
    page.goto(f"{portal.url}/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("pw-alice")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{portal.url}/orgs/acme/chat/")


def test_owner_adds_a_provider_tests_it_and_adds_a_model(live_portal: LivePortal, browser_page: Page) -> None:
    page = browser_page
    simulator_url = live_portal.simulator.base_url

    sign_in(page, live_portal)
    page.goto(f"{live_portal.url}/orgs/acme/settings/providers/")
    expect(page.get_by_role("heading", name="Providers", exact=True)).to_be_visible()

    # Given the kind is openai-compatible, Bedrock's settings are hidden and the base URL is offered.
    form = page.locator("form.provider-form")
    form.get_by_label("Name").fill("Team gateway")
    form.get_by_label("Kind").select_option("openai-compatible")
    expect(form.get_by_label("AWS region")).to_be_hidden()
    form.get_by_label("Base URL").fill(simulator_url)
    form.get_by_label("API key").fill(KEY)
    form.get_by_role("button", name="Add provider").click()

    expect(page.get_by_text("Added the provider Team gateway")).to_be_visible()
    row = page.locator("tbody.provider-row", has_text="Team gateway")
    expect(row.locator(".key-cell")).to_have_text("key •••• beef")
    assert KEY not in page.content()

    # When the owner presses Test, every step (DNS, TCP, the API with the key) shows a tick.
    row.get_by_role("button", name="Test Team gateway").click()
    row = page.locator("tbody.provider-row", has_text="Team gateway")
    steps = row.locator(".check-step")
    expect(steps.first).to_be_visible()
    expect(row.locator(".check-step.step-failed")).to_have_count(0)
    expect(row.locator(".check-badge")).to_have_text("✓ passed")
    expect(steps.filter(has_text="tcp")).to_contain_text("✓")
    assert steps.count() >= 3

    # Then the owner offers one of its models to the organization.
    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Models").click()
    model_form = page.locator("#add-model form")
    model_form.get_by_label("Provider").select_option(label="Team gateway")
    model_form.get_by_label("Identifier").fill("airlock-simulator")
    model_form.get_by_label("Display name").fill("Gateway model")
    model_form.get_by_label("Context limit").fill("32000")
    model_form.get_by_label("Input price").fill("0.5")
    model_form.get_by_role("button", name="Add model").click()

    expect(page.get_by_text("Added the model Gateway model")).to_be_visible()
    model_row = page.locator("tr.model-row", has_text="Gateway model")
    expect(model_row).to_contain_text("airlock-simulator")
    expect(model_row).to_contain_text("Team gateway")
    expect(model_row).to_contain_text("$0.5 /")
    page.screenshot(path=MODELS_SCREENSHOT, full_page=True)

    # The providers page now counts the model and still shows the last check.
    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Providers").click()
    expect(page).to_have_url(re.compile(r"/orgs/acme/settings/providers/$"))
    expect(row.locator(".check-badge")).to_have_text("✓ passed")
    expect(row.locator("td.models-cell")).to_have_text("1")
    page.screenshot(path=SETTINGS_SCREENSHOT, full_page=True)
    assert KEY not in page.content()
