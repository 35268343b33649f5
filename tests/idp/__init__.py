"""A loopback OpenID Connect provider for the SSO tests (node-oidc-provider, see server.mjs)."""
