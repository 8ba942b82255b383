'use strict';
// The Node.js session proxy that bench/run.sh measures beside session-proxy: the same job
// (DESIGN.md's header protocol) written the way a Node user would, with express,
// express-session, connect-redis and http-proxy-middleware, on every core with node:cluster.
//
//   - a request with a valid session cookie: express-session reads the session from Redis
//     (one GET); the proxy passes its data to the upstream as `x-session: <JSON>` (`{}` for a
//     visitor without one);
//   - the upstream's `x-session-update: <JSON object>` replaces the data and is saved before
//     the response is sent (one SET; a new visitor gets a cookie); `null` destroys it;
//     `x-session-regenerate` moves it to a new id;
//   - the protocol headers are removed from client requests (any spelling with `_`) and from
//     responses; response bodies stream (selfHandleResponse + pipe, nothing buffered).
//
// Like session-proxy with `rolling = false`, it does not refresh the TTL on reads
// (connect-redis `disableTouch`, express-session `resave: false`), so both make one store
// read per request with a cookie.
//
// Environment: PORT (listen on 127.0.0.1), UPSTREAM (http://host:port), REDIS_URL,
// SESSION_SECRET, WORKERS (default: one per core).

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const PORT = Number(process.env.PORT || 8090);
const UPSTREAM = process.env.UPSTREAM || 'http://127.0.0.1:3000';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const SECRET = process.env.SESSION_SECRET || 'bench-secret';
const WORKERS = Number(process.env.WORKERS || os.availableParallelism());
/** Same as session-proxy's default `max_age`: cookie Max-Age and Redis TTL. */
const MAX_AGE_SECONDS = 1209600;

const SESSION_HEADER = 'x-session';
const UPDATE_HEADER = 'x-session-update';
const REGENERATE_HEADER = 'x-session-regenerate';
const PROTOCOL = new Set([SESSION_HEADER, UPDATE_HEADER, REGENERATE_HEADER]);
/** Hop-by-hop response headers that must not be copied to the client (RFC 9110 7.6.1). */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding',
  'upgrade', 'proxy-authenticate', 'proxy-authorization',
]);

/** A header name as PHP/CGI would read it: lowercase, `_` as `-`. */
const normalise = (name) => name.toLowerCase().replace(/_/g, '-');

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('exit', (worker, code, signal) => {
    console.error(`node-proxy: worker ${worker.process.pid} exited (${signal || code})`);
  });
  const stop = () => {
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  worker().catch((e) => {
    console.error('node-proxy: cannot start:', e);
    process.exit(1);
  });
}

async function worker() {
  const express = require('express');
  const session = require('express-session');
  const RedisStore = require('connect-redis').default;
  const { createClient } = require('redis');
  const { createProxyMiddleware } = require('http-proxy-middleware');

  const redis = createClient({ url: REDIS_URL });
  redis.on('error', (e) => console.error('node-proxy: redis:', e.message));
  await redis.connect();

  const app = express();
  app.disable('x-powered-by');

  // A client can never forge a session.
  app.use((req, _res, next) => {
    for (const name of Object.keys(req.headers)) {
      if (PROTOCOL.has(normalise(name))) delete req.headers[name];
    }
    next();
  });

  app.use(session({
    store: new RedisStore({ client: redis, prefix: '_nodesession:', disableTouch: true }),
    name: '__session',
    secret: SECRET,
    resave: false,
    saveUninitialized: false,
    rolling: false,
    cookie: { path: '/', httpOnly: true, secure: false, sameSite: 'lax', maxAge: MAX_AGE_SECONDS * 1000 },
  }));

  const agent = new http.Agent({ keepAlive: true });

  app.use(createProxyMiddleware({
    target: UPSTREAM,
    agent,
    xfwd: true,
    selfHandleResponse: true,
    on: {
      proxyReq: (proxyReq, req) => {
        proxyReq.setHeader(SESSION_HEADER, JSON.stringify(sessionData(req.session)));
      },
      proxyRes: (proxyRes, req, res) => respond(proxyRes, req, res),
      error: (err, _req, res) => {
        console.error('node-proxy: upstream error:', err.code || err.message);
        if (res.headersSent) return res.destroy();
        res.writeHead(502, { 'content-type': 'text/plain; charset=utf-8' });
        res.end('502 Bad Gateway\n');
      },
    },
  }));

  http.createServer(app).listen(PORT, '127.0.0.1');
}

/** The session's data without express-session's own `cookie` field. */
function sessionData(sess) {
  if (!sess) return {};
  const { cookie: _cookie, ...data } = sess;
  return data;
}

/** Acts on the upstream's protocol headers, then streams its response to the client. */
function respond(proxyRes, req, res) {
  const headers = {};
  for (const [name, value] of Object.entries(proxyRes.headers)) {
    if (!HOP_BY_HOP.has(name) && !PROTOCOL.has(normalise(name))) headers[name] = value;
  }
  const send = (err) => {
    if (err) return fail(proxyRes, res, 503);
    res.writeHead(proxyRes.statusCode, proxyRes.statusMessage, headers);
    proxyRes.pipe(res);
  };
  const update = proxyRes.headers[UPDATE_HEADER];
  const regenerate = proxyRes.headers[REGENERATE_HEADER] !== undefined;
  if (update === undefined && !regenerate) return send();

  let data;
  if (update !== undefined) {
    try {
      data = JSON.parse(update);
    } catch {
      return fail(proxyRes, res, 502);
    }
    if (data !== null && (typeof data !== 'object' || Array.isArray(data))) {
      return fail(proxyRes, res, 502);
    }
  }
  const sess = req.session;
  if (data === null) return sess.destroy(send);
  const replace = () => {
    if (data !== undefined) {
      for (const key of Object.keys(req.session)) if (key !== 'cookie') delete req.session[key];
      Object.assign(req.session, data);
    }
    req.session.save(send);
  };
  if (regenerate) {
    const keep = data === undefined ? sessionData(sess) : undefined;
    return sess.regenerate((err) => {
      if (err) return send(err);
      if (keep) Object.assign(req.session, keep);
      replace();
    });
  }
  replace();
}

function fail(proxyRes, res, status) {
  proxyRes.resume();
  const text = status === 502 ? '502 Bad Gateway\n' : '503 Service Unavailable\n';
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(text);
}
