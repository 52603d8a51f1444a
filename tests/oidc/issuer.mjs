// A local OpenID Connect issuer for Berth's tests: npm's oidc-provider (certified) with test
// clients, accounts from a JSON fixture and a minimal login/consent UI that a script can drive.
//
//   node issuer.mjs --port 9400 [--accounts accounts.json] [--pid-file FILE]
//                   [--redirect-uri URI]... [--audience CLIENT_ID]... [--id-token-alg RS256|ES256]
//                   [--id-token-ttl SECONDS]
//
// Every option can also come from the environment: OIDC_PORT, OIDC_ACCOUNTS, OIDC_PID_FILE,
// OIDC_REDIRECT_URIS and OIDC_AUDIENCES (space-separated), OIDC_ID_TOKEN_ALG, OIDC_ID_TOKEN_TTL.
// Prints `issuer http://127.0.0.1:PORT` once listening; exits 0 on SIGTERM/SIGINT.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const here = dirname(fileURLToPath(import.meta.url));
const envList = (name) => (process.env[name] || '').split(/\s+/).filter(Boolean);

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT },
    accounts: { type: 'string', default: process.env.OIDC_ACCOUNTS || join(here, 'accounts.json') },
    'pid-file': { type: 'string', default: process.env.OIDC_PID_FILE },
    'redirect-uri': { type: 'string', multiple: true, default: envList('OIDC_REDIRECT_URIS') },
    audience: { type: 'string', multiple: true, default: envList('OIDC_AUDIENCES') },
    'id-token-alg': { type: 'string', default: process.env.OIDC_ID_TOKEN_ALG || 'RS256' },
    'id-token-ttl': { type: 'string', default: process.env.OIDC_ID_TOKEN_TTL || '3600' },
  },
});

const port = Number(opts.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('issuer.mjs: --port (or OIDC_PORT) must be a TCP port number');
  process.exit(2);
}
if (!['RS256', 'ES256'].includes(opts['id-token-alg'])) {
  console.error('issuer.mjs: --id-token-alg must be RS256 or ES256 (the keys it generates)');
  process.exit(2);
}
if (!(Number(opts['id-token-ttl']) > 0)) {
  console.error('issuer.mjs: --id-token-ttl must be a positive number of seconds');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(readFileSync(opts.accounts, 'utf8'));

// Claims people's providers hand out only when a scope asks for them. Every other claim in the
// fixture is a CI workload claim (repository, ref, project_path, ...): GitHub Actions and GitLab
// CI put those in every ID token, so they ride on the `openid` scope here.
const scopedClaims = {
  email: ['email', 'email_verified'],
  profile: ['name', 'preferred_username'],
  groups: ['groups'],
};
const personClaims = new Set(Object.values(scopedClaims).flat());
const ciClaims = new Set();
for (const account of Object.values(accounts)) {
  for (const name of Object.keys(account.claims || {})) {
    if (!personClaims.has(name)) ciClaims.add(name);
  }
}

// Signing keys live only as long as the process: a restart is a key rotation, as a test wants.
function signingKey(alg, type, options) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg.toLowerCase()}-${randomBytes(6).toString('hex')}` };
}
const jwks = {
  keys: [
    signingKey('RS256', 'rsa', { modulusLength: 2048 }),
    signingKey('ES256', 'ec', { namedCurve: 'P-256' }),
  ],
};

// RFC 8252 section 7.3: for native clients oidc-provider accepts a loopback redirect URI on any
// port, so a CLI (or a test) can listen on whatever port is free.
const loopbackCallbacks = ['http://127.0.0.1/callback', 'http://localhost/callback', 'http://[::1]/callback'];
const extraRedirects = opts['redirect-uri'];
// Native clients may only have loopback http (or private-scheme) redirect URIs; oidc-provider
// refuses to start with others, so those extra URIs go to berth-web alone.
const isLoopbackHttp = (uri) => {
  const url = URL.parse(uri);
  return url?.protocol === 'http:' && ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
};
const nativeClient = (clientId) => ({
  client_id: clientId,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  redirect_uris: [...loopbackCallbacks, ...extraRedirects.filter(isLoopbackHttp)],
});
const clients = [
  // People signing in with a command-line tool: public, auth code + PKCE.
  nativeClient('berth-cli'),
  // A server-side web application (Berth's own sign-in page): confidential. Web clients get no
  // any-port loopback matching, so the test passes Berth's callback with --redirect-uri.
  {
    client_id: 'berth-web',
    client_secret: 'berth-web-secret',
    application_type: 'web',
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: ['http://127.0.0.1:8080/callback', ...extraRedirects],
  },
  // CI audiences: an ID token's `aud` is the client id, so a CI job's token "for audience
  // berth-registry" comes through this client; `other-registry` gives a token Berth must refuse.
  ...[...new Set(['berth-registry', 'other-registry', ...opts.audience])].map(nativeClient),
];

const configuration = {
  clients,
  clientDefaults: {
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: opts['id-token-alg'],
  },
  jwks,
  claims: { openid: ['sub', ...ciClaims], ...scopedClaims },
  // Put the scope's claims in the ID token itself, not only at the userinfo endpoint: Berth
  // verifies the ID token alone (CI jobs never call userinfo).
  conformIdTokenClaims: false,
  // OAuth 2.1 / RFC 9700: PKCE for every client, the confidential one too.
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // Explicit lifetimes (seconds): the provider's defaults log a notice each time they are used.
  ttl: {
    IdToken: Number(opts['id-token-ttl']),
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
  async findAccount(ctx, sub) {
    const account = accounts[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, ...account.claims };
      },
    };
  },
};

const provider = new Provider(issuer, configuration);

const html = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!doctype html><html><head><meta charset="utf-8"><title>${html(title)}</title></head><body><h1>${html(title)}</h1>${body}</body></html>`);
}

function loginForm(res, uid, params, status = 200, error = '') {
  page(res, status, 'Sign in', `${error ? `<p class="error">${html(error)}</p>` : ''}
<p>Client: ${html(params.client_id)}</p>
<form method="post" action="/interaction/${html(uid)}/login">
<input name="login" placeholder="account" autofocus>
<input name="password" type="password" placeholder="password">
<button type="submit">Sign in</button>
</form>`);
}

function consentForm(res, uid, params, details) {
  const scopes = details.missingOIDCScope || [];
  page(res, 200, 'Authorize', `<p>${html(params.client_id)} asks for: ${html(scopes.join(' ') || '(nothing new)')}</p>
<form method="post" action="/interaction/${html(uid)}/confirm"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${html(uid)}/abort"><button type="submit">Deny</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The interaction routes (oidc-provider leaves the UI to the host application): GET shows the
// pending prompt; POST .../login checks the fixture password; POST .../confirm grants what the
// prompt says is missing; POST .../abort denies.
async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    page(res, 400, 'Interaction mismatch', '<p>the interaction cookie is for another interaction</p>');
    return;
  }
  const { prompt, params, session, grantId } = details;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') loginForm(res, uid, params);
    else if (prompt.name === 'consent') consentForm(res, uid, params, prompt.details);
    else page(res, 501, 'Not implemented', `<p>prompt ${html(prompt.name)}</p>`);
    return;
  }
  if (req.method !== 'POST') {
    page(res, 405, 'Method not allowed', '');
    return;
  }

  const form = await readForm(req);
  if (action === 'login' && prompt.name === 'login') {
    const login = form.get('login') || '';
    const account = Object.hasOwn(accounts, login) ? accounts[login] : undefined;
    if (!account || account.password !== form.get('password')) {
      // Stay on the sign-in page: the flow goes no further and no code is issued.
      loginForm(res, uid, params, 401, 'wrong account or password');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
    return;
  }
  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  page(res, 400, 'Unexpected submission', `<p>${html(action)} while the prompt is ${html(prompt.name)}</p>`);
}

const providerCallback = provider.callback();
const server = createServer((req, res) => {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?\/?(?:\?.*)?$/.exec(req.url);
  if (!match) {
    providerCallback(req, res);
    return;
  }
  interaction(req, res, match[1], match[2]).catch((err) => {
    // An expired or unknown interaction (SessionNotFound) is the client's problem, not a crash.
    if (!res.headersSent) page(res, err.statusCode || 500, 'Interaction failed', `<p>${html(err.message)}</p>`);
    else res.end();
  });
});

// Log what the provider refused, so a failing test's issuer log says why.
provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));
for (const event of ['authorization.error', 'grant.error', 'introspection.error', 'revocation.error', 'userinfo.error']) {
  provider.on(event, (ctx, err) => console.error(event, err.error || err.name, err.error_description || err.message));
}

const pidFile = opts['pid-file'];
function shutdown(signal) {
  console.log(`${signal}: shutting down`);
  server.close(() => {
    if (pidFile) rmSync(pidFile, { force: true });
    process.exit(0);
  });
  // Keep-alive connections from a test's session would hold close() open; end them.
  server.closeAllConnections();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.listen(port, '127.0.0.1', () => {
  if (pidFile) writeFileSync(pidFile, `${process.pid}\n`);
  console.log(`issuer ${issuer}`);
});
