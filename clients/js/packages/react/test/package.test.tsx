// @vitest-environment node
// The built package: 'use client' on the first line of every React module in both
// builds, both builds loadable, and server rendering that touches no browser global.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { renderToString } from 'react-dom/server';
import { describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');

describe('the built package', () => {
  it('exists (npm run build)', () => {
    expect(existsSync(path.join(dist, 'esm', 'index.js')), 'run `npm run build` in clients/js first').toBe(true);
    expect(existsSync(path.join(dist, 'cjs', 'index.js'))).toBe(true);
    expect(existsSync(path.join(dist, 'esm', 'index.d.ts'))).toBe(true);
    expect(existsSync(path.join(dist, 'cjs', 'core', 'index.d.ts'))).toBe(true);
  });

  it("keeps 'use client' on the first line of the React modules", () => {
    for (const build of ['esm', 'cjs']) {
      for (const file of ['index.js', 'hooks.js', 'provider.js']) {
        const first = readFileSync(path.join(dist, build, file), 'utf8').split('\n')[0];
        expect(first, `${build}/${file}`).toBe("'use client';");
      }
    }
    // The core is framework-agnostic: no directive needed there.
    const coreFiles = readdirSync(path.join(dist, 'esm', 'core')).filter((f) => f.endsWith('.js'));
    expect(coreFiles.length).toBeGreaterThan(5);
  });

  it('loads as CommonJS and as ESM with the same surface', async () => {
    const require = createRequire(import.meta.url);
    const cjs = require(path.join(dist, 'cjs', 'index.js')) as Record<string, unknown>;
    const esm = (await import(path.join(dist, 'esm', 'index.js'))) as Record<string, unknown>;
    const names = ['TidingsProvider', 'useTidings', 'useSubscription', 'usePresence', 'useTyping', 'useHistory', 'Tidings', 'TypingTracker', 'PresenceTracker'];
    for (const name of names) {
      expect(typeof cjs[name], `cjs ${name}`).toBe('function');
      expect(typeof esm[name], `esm ${name}`).toBe('function');
    }
  });

  it('renders on the server without a window, and the hooks report their empty state', async () => {
    expect(typeof (globalThis as { window?: unknown }).window).toBe('undefined');
    const { TidingsProvider, useTidings, useSubscription, usePresence, useTyping, useHistory } = await import(
      path.join(dist, 'esm', 'index.js')
    );
    function Chat() {
      const conn = useTidings();
      const sub = useSubscription('room', { history: 10 });
      const presence = usePresence('room');
      const typing = useTyping('typing:room');
      const history = useHistory('room');
      return (
        <p>
          {conn.state}|{sub.state}|{sub.publications.length}|{presence.members.length}|{typing.typists.length}|{String(history.loading)}
        </p>
      );
    }
    const html = renderToString(
      <TidingsProvider url="http://127.0.0.1:1" getToken={async () => 'never called'}>
        <Chat />
      </TidingsProvider>,
    );
    expect(html.replace(/<!-- -->/g, '')).toBe('<p>disconnected|unsubscribed|0|0|0|true</p>');
  });
});
