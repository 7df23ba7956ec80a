// A real OAuth 2.0 / OpenID Connect authorization server (panva's oidc-provider) for the gateway's
// tests, served over TLS under an issuer with a path (MSAL insists on both).
//
// What is ours: the login/consent step, which every oidc-provider deployment writes itself. Here
// it decides without a person: it signs in the account named by the current "mode" and grants
// what was asked, or declines (access_denied). A few /test/* routes set that mode, make the token
// endpoint sick for a while (5xx), and report how many requests each endpoint answered.
//
// usage: node server.mjs config.json   → prints "listening <port>" once ready.

import fs from 'node:fs';
import https from 'node:https';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const mount = '/oidc';
const state = {
  mode: { account: config.account ?? 'user@example.test', approve: true },
  sick: 0,
  counts: {},
};
const count = (name) => { state.counts[name] = (state.counts[name] ?? 0) + 1; };

const server = https.createServer({ key: fs.readFileSync(config.key), cert: fs.readFileSync(config.cert) });
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `https://127.0.0.1:${port}${mount}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    scopes: ['openid', 'offline_access', 'email', 'profile'],
    claims: { email: ['email', 'email_verified'], profile: ['name', 'preferred_username'] },
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: id, email_verified: true, name: id.split('@')[0], preferred_username: id };
        },
      };
    },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
      // Non-OpenID scopes belong to a resource server, as Gmail's and Graph's do at Google and
      // Microsoft: each client's API is its default resource, its scopes the API's scopes.
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client) => config.resources[client.clientId].resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => {
          const found = config.resources[client.clientId];
          if (!found || found.resource !== resource) throw new errors.InvalidTarget();
          return { scope: found.scopes.join(' '), accessTokenFormat: 'opaque', audience: resource };
        },
      },
    },
    interactions: { url: (ctx, interaction) => `${mount}/interaction/${interaction.uid}` },
    // Google's flow asks for no offline_access scope (access_type=offline instead): any client
    // allowed the refresh_token grant gets one, as at Google.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Rotate on every use, as Microsoft does; a rotated-out token then fails with invalid_grant.
    rotateRefreshToken: () => true,
    ttl: {
      AccessToken: config.accessTokenTtl ?? 3600,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 3600,
      Grant: 86400,
      RefreshToken: 86400,
    },
    cookies: { keys: ['test-cookie-key-0123456789abcdef'] },
    pkce: { required: () => true },
  });
  provider.proxy = false;
  provider.on('grant.success', (ctx) => count(`token:${ctx.oidc.params.grant_type}`));
  provider.on('grant.error', (ctx, err) => count(`token_error:${err.error}`));
  provider.on('server_error', (ctx, err) => { console.error('oidc-provider server_error', err); });
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    const path = req.url.split('?')[0];
    try {
      if (path.startsWith('/test/')) return await control(req, res, path);
      if (!path.startsWith(mount)) { res.statusCode = 404; return res.end(); }
      if (req.method === 'POST' && path === `${mount}/token`) {
        count('token_requests');
        if (state.sick > 0) {
          state.sick -= 1;
          res.writeHead(503, { 'content-type': 'application/json' });
          return res.end(JSON.stringify({ error: 'temporarily_unavailable', error_description: 'try later' }));
        }
      }
      if (req.method === 'POST' && path === `${mount}/token/revocation`) {
        count('revocation_requests');
        if (state.sick > 0) {
          state.sick -= 1;
          res.writeHead(503, { 'content-type': 'text/html' });
          return res.end('<html><body>Service Unavailable</body></html>');
        }
        count('revocations');
      }
      if (path.startsWith(`${mount}/interaction/`)) return await interact(provider, req, res);
      req.originalUrl = req.url;
      req.url = req.url.slice(mount.length) || '/';
      return callback(req, res);
    } catch (err) {
      console.error(err);
      res.statusCode = 500;
      res.end();
    }
  });
  console.log(`listening ${port}`);
});

async function interact(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (!state.mode.approve) {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  if (prompt.name === 'login') {
    return provider.interactionFinished(req, res, { login: { accountId: state.mode.account } }, {
      mergeWithLastSubmission: false,
    });
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

async function control(req, res, path) {
  let body = '';
  for await (const chunk of req) body += chunk;
  const input = body ? JSON.parse(body) : {};
  if (path === '/test/mode') state.mode = { ...state.mode, ...input };
  else if (path === '/test/sick') state.sick = input.requests ?? 0;
  else if (path === '/test/reset') state.counts = {};
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ mode: state.mode, sick: state.sick, counts: state.counts }));
}
