// Starts the real invitation-server binary for tests and mints tokens.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The workspace root. */
export const ROOT = join(here, '..', '..', '..');
/** The server binary: INVITATION_SERVER_BIN, else the workspace's debug build. */
export const BIN = process.env.INVITATION_SERVER_BIN ?? join(ROOT, 'target', 'debug', 'invitation-server');

function toml(value) {
  if (Array.isArray(value)) return `[${value.map(toml).join(', ')}]`;
  if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') return JSON.stringify(value);
  throw new Error(`cannot write ${JSON.stringify(value)} as a TOML value`);
}

/**
 * Starts the binary with these settings (TOML keys) and `--in-memory`;
 * resolves once it logs where it listens. `extraArgs` are added flags.
 */
export async function startServer(settings, { extraArgs = [], within = 10000 } = {}) {
  if (!existsSync(BIN)) throw new Error(`no server binary at ${BIN}: run cargo build -p invitation-server (or set INVITATION_SERVER_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), 'invitation-js-'));
  const config = join(dir, 'server.toml');
  writeFileSync(config, Object.entries({ listen: '127.0.0.1:0', ...settings }).map(([k, v]) => `${k} = ${toml(v)}`).join('\n') + '\n');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('INVITATION_')));
  env.RUST_LOG = env.RUST_LOG ?? 'info';
  const child = spawn(BIN, ['--config', config, '--in-memory', '--log-format', 'json', ...extraArgs], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not say where it listens within ${within} ms:\n${lines.join('\n')}`)), within);
    let buf = '';
    const onData = (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (lines.length < 500) lines.push(line);
        const m = /"message":"listening[^"]*","addr":"([^"]+)"/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    exited.then((e) => { clearTimeout(timer); reject(new Error(`the server exited (${JSON.stringify(e)}):\n${lines.join('\n')}`)); });
  });
  let stopped = false;
  return {
    addr,
    url: `ws://${addr}/`,
    http: `http://${addr}`,
    lines,
    /** Asks it to stop gracefully (SIGTERM); resolves at its exit. */
    async stop() {
      if (!stopped) {
        stopped = true;
        child.kill('SIGTERM');
      }
      const killer = setTimeout(() => child.kill('SIGKILL'), 10000);
      const r = await exited;
      clearTimeout(killer);
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
    /** Sends SIGTERM without waiting. */
    terminate() {
      stopped = true;
      child.kill('SIGTERM');
    },
  };
}

const b64url = (buf) => Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

/** An HS256 token as the server expects (docs/protocol.md, "Token"). */
export function mintToken({ secret, user, name = user, ttlS = 3600, audience = 'invitation' }) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub: user, name, aud: audience, iat: now, exp: now + ttlS }));
  const sig = b64url(createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

/** Rejects with `what` unless `promise` settles within `ms`. */
export function within(ms, promise, what) {
  let t;
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms); }),
  ]);
}
