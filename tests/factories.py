"""factory_boy factories for the rows tests need."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from organizations.models import Membership, MembershipRole, Organization
from providers.models import LanguageModel, Provider, ProviderKind

User = get_user_model()


class UserFactory(factory.django.DjangoModelFactory):
    """A user with a known password ("pw-" + username)."""

    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.PostGenerationMethodCall("set_password", "unused")

    @factory.post_generation
    def known_password(self, create: bool, extracted: object, **kwargs: object) -> None:
        self.set_password(f"pw-{self.username}")
        if create:
            self.save()


class OrganizationFactory(factory.django.DjangoModelFactory):
    """An organization."""

    class Meta:
        model = Organization
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"org{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


def make_member(organization: Organization, user: object, *roles: str) -> Membership:
    """Put a user in an organization with the given roles (test set-up, not a service call)."""
    membership, _ = Membership.objects.get_or_create(organization=organization, user=user)
    for role in roles:
        MembershipRole.objects.get_or_create(membership=membership, role=role)
    return membership


class ProviderFactory(factory.django.DjangoModelFactory):
    """An OpenAI-compatible provider (point base_url at a loopback simulator)."""

    class Meta:
        model = Provider

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"provider{n}")
    kind = ProviderKind.OPENAI_COMPATIBLE
    base_url = "http://127.0.0.1:9/v1"


class LanguageModelFactory(factory.django.DjangoModelFactory):
    """A model offered by a provider."""

    class Meta:
        model = LanguageModel

    provider = factory.SubFactory(ProviderFactory)
    organization = factory.LazyAttribute(lambda m: m.provider.organization)
    identifier = factory.Sequence(lambda n: f"sim-model-{n}")
    display_name = factory.LazyAttribute(lambda m: m.identifier.title())
    context_limit = 128_000
