// An independent OpenID provider (the `oidc-provider` package from the npm registry) for
// tests/page_browser.rs's interoperability test. Usage:
//   node provider.mjs <port> <client_id> <client_secret> <redirect_uri>
// Signs ID tokens with a fresh Ed25519 key (EdDSA); its dev interactions ask for a login
// (any value; the test types an owner id) and a password (any), then consent.
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const { privateKey } = crypto.generateKeyPairSync('ed25519');
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'interop', alg: 'EdDSA', use: 'sig' };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: 'EdDSA',
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  enabledJWA: { idTokenSigningAlgValues: ['EdDSA'] },
  pkce: { required: () => true },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
