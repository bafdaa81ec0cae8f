// An independent OpenID provider (the `oidc-provider` package from the npm registry) for
// tests/page_browser.rs's interoperability test. Usage:
//   node provider.mjs <port> <client_id> <client_secret> <redirect_uri>
// Signs ID tokens as it does out of the box: RS256, with its own development signing keys (no
// `jwks` given), which is what most providers do; its dev interactions ask for a login (any
// value; the test types an owner id) and a password (any), then consent.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
