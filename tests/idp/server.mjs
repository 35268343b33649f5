// A loopback OpenID Connect provider for Airlock's SSO tests (node-oidc-provider with its development
// sign-in pages, which accept any password). Never deploy it.
//
//   node server.mjs [port]
//
// Environment: IDP_CLIENT_ID, IDP_CLIENT_SECRET, IDP_REDIRECT_URIS (comma-separated) describe the one client;
// IDP_ACCOUNT_ID, IDP_ACCOUNT_EMAIL, IDP_ACCOUNT_NAME, IDP_ACCOUNT_USERNAME the one account. It listens on
// 127.0.0.1 only, on the port given or (0, the default) on one the system picks when binding, and prints
// "ready <issuer>" once it accepts connections.
import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

const port = Number.parseInt(process.argv[2] ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: node server.mjs [port]');
  process.exit(2);
}
const env = (name, fallback) => process.env[name] || fallback;

const client = {
  client_id: env('IDP_CLIENT_ID', 'airlock-test'),
  client_secret: env('IDP_CLIENT_SECRET', 'airlock-test-secret'),
  redirect_uris: env('IDP_REDIRECT_URIS', 'http://testserver/accounts/oidc/sso/login/callback/').split(','),
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: env('IDP_TOKEN_AUTH_METHOD', 'client_secret_post'),
};
const account = {
  sub: env('IDP_ACCOUNT_ID', 'sso-alice'),
  email: env('IDP_ACCOUNT_EMAIL', 'alice@example.test'),
  email_verified: true,
  name: env('IDP_ACCOUNT_NAME', 'Alice Example'),
  preferred_username: env('IDP_ACCOUNT_USERNAME', 'alice'),
};

// A fresh signing key per run: the relying party reads it from the JWKS endpoint.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-idp', use: 'sig', alg: 'RS256' };

// The issuer names the port, which is known once the server is bound.
const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [client],
    jwks: { keys: [signingKey] },
    cookies: { keys: ['airlock-test-idp-cookies'] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
    },
    // Only the one account exists: any other login the development pages accept finds no account.
    async findAccount(ctx, id) {
      if (id !== account.sub) return undefined;
      return { accountId: id, async claims() { return { ...account }; } };
    },
    features: { devInteractions: { enabled: true } },
  });
  provider.on('server_error', (ctx, error) => console.error('server_error', error));
  server.on('request', provider.callback());
  console.log(`ready ${issuer}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
