// A headless Chromium driven over the DevTools protocol with the `ws` package (no puppeteer, no browser download):
// Debian's `chromium` if it is installed. The browser listens on an ephemeral loopback DevTools port it prints on
// stderr (bind, don't probe), and is stopped by its PID.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';

const candidates = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];
const startTimeoutMs = 30_000;
const commandTimeoutMs = 30_000;

/**
 * The browser binary, or undefined when none is installed (the caller skips with a line saying so). CHROMIUM=path
 * chooses one; a CHROMIUM that does not exist means none (how the skip path is checked).
 */
export function findChromium(): string | undefined {
  const fromEnv = process.env['CHROMIUM'];
  if (fromEnv !== undefined) return existsSync(fromEnv) ? fromEnv : undefined;
  return candidates.find((c) => existsSync(c));
}

export interface Page {
  /** Console errors, uncaught exceptions and CSP violations the page reported. */
  readonly errors: string[];
  navigate(url: string): Promise<void>;
  /** Evaluates an expression in the page and returns its JSON value (promises are awaited). */
  evaluate<T>(expression: string): Promise<T>;
  screenshot(): Promise<Buffer>;
}

export interface Browser {
  readonly pid: number;
  page: Page;
  close(): Promise<void>;
}

interface Pending { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }

function devtoolsUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`chromium printed no DevTools URL within ${startTimeoutMs} ms: ${seen.slice(-500)}`)), startTimeoutMs);
    child.stderr!.on('data', (d: Buffer) => {
      seen += d.toString();
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(seen);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`chromium exited (${code}) before listening: ${seen.slice(-500)}`));
    });
  });
}

/** Starts the browser with one page of a phone's size (390x844 CSS pixels, as an iPhone 12-15). */
export async function launch(binary: string): Promise<Browser> {
  const profile = await mkdtemp(join(tmpdir(), 'membershipd-chromium-'));
  const child = spawn(binary, [
    '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check', '--disable-extensions',
    '--disable-background-networking', '--disable-sync', '--metrics-recording-only', '--mute-audio',
    '--remote-debugging-address=127.0.0.1', '--remote-debugging-port=0', `--user-data-dir=${profile}`, 'about:blank',
  // Its own process group: if it has to be killed, its zygote and renderer processes go with it.
  ], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const close = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ } }, 5_000);
      await exited;
      clearTimeout(killer);
    }
    // The helpers (zygote, renderer) may outlive the main process for a moment and still write the profile.
    try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* the group is gone */ }
    await rm(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  };
  try {
    const browserWs = await devtoolsUrl(child);
    const port = new URL(browserWs).port;
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as { type: string; webSocketDebuggerUrl: string }[];
    const target = targets.find((x) => x.type === 'page');
    if (target === undefined) throw new Error('chromium has no page target');
    const page = await openPage(target.webSocketDebuggerUrl);
    return { pid: child.pid!, page, close: async () => { page.close(); await close(); } };
  } catch (err) {
    await close();
    throw err;
  }
}

async function openPage(url: string): Promise<Page & { close(): void }> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  let id = 0;
  const pending = new Map<number, Pending>();
  const listeners = new Map<string, ((params: Record<string, unknown>) => void)[]>();
  const errors: string[] = [];
  ws.on('message', (data: Buffer) => {
    const msg = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: { message: string }; method?: string; params?: Record<string, unknown> };
    if (msg.id !== undefined) {
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(new Error(msg.error.message));
      else p.resolve(msg.result);
    } else if (msg.method !== undefined) {
      for (const l of listeners.get(msg.method) ?? []) l(msg.params ?? {});
    }
  });
  const send = <T>(method: string, params: Record<string, unknown> = {}): Promise<T> => new Promise<T>((resolve, reject) => {
    const n = ++id;
    const timer = setTimeout(() => { pending.delete(n); reject(new Error(`${method}: no answer within ${commandTimeoutMs} ms`)); }, commandTimeoutMs);
    pending.set(n, { resolve: resolve as (v: unknown) => void, reject, timer });
    ws.send(JSON.stringify({ id: n, method, params }));
  });
  const on = (method: string, fn: (params: Record<string, unknown>) => void): void => {
    listeners.set(method, [...(listeners.get(method) ?? []), fn]);
  };
  on('Runtime.exceptionThrown', (p) => errors.push(`exception: ${JSON.stringify((p['exceptionDetails'] as Record<string, unknown>)?.['text'])}`));
  on('Log.entryAdded', (p) => {
    const e = p['entry'] as { level: string; text: string };
    if (e.level === 'error') errors.push(`log: ${e.text}`);
  });
  on('Runtime.consoleAPICalled', (p) => { if (p['type'] === 'error') errors.push(`console: ${JSON.stringify(p['args'])}`); });
  await send('Page.enable');
  await send('Runtime.enable');
  await send('Log.enable');
  await send('Emulation.setDeviceMetricsOverride', { width: 390, height: 844, deviceScaleFactor: 2, mobile: true });
  return {
    errors,
    async navigate(target) {
      const loaded = new Promise<void>((resolve) => on('Page.loadEventFired', () => resolve()));
      const r = await send<{ errorText?: string }>('Page.navigate', { url: target });
      if (r.errorText) throw new Error(`navigate ${target}: ${r.errorText}`);
      await loaded;
    },
    async evaluate<T>(expression: string) {
      const r = await send<{ result: { value?: unknown }; exceptionDetails?: { text: string } }>('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true });
      if (r.exceptionDetails) throw new Error(`evaluate: ${r.exceptionDetails.text}`);
      return r.result.value as T;
    },
    async screenshot() {
      // The whole page, not only the first screen: a phone scrolls.
      const m = await send<{ cssContentSize: { width: number; height: number } }>('Page.getLayoutMetrics');
      const clip = { x: 0, y: 0, width: Math.ceil(m.cssContentSize.width), height: Math.ceil(m.cssContentSize.height), scale: 1 };
      const r = await send<{ data: string }>('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true, clip });
      return Buffer.from(r.data, 'base64');
    },
    close() {
      for (const p of pending.values()) { clearTimeout(p.timer); p.reject(new Error('page closed')); }
      pending.clear();
      ws.close();
    },
  };
}
