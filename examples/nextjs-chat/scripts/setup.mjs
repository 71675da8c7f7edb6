// Runs before `npm run dev`, `npm run build` and `npm start`, so that one command is
// enough on a fresh checkout: installs the clients/js workspace and builds @tidings/react
// (this example takes the package from the repository), then installs this example's
// own dependencies, each only when missing or out of date.

import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const js = path.resolve(here, '..', '..', 'clients', 'js');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

function run(cwd, ...args) {
  console.log(`> (cd ${path.relative(process.cwd(), cwd) || '.'} && npm ${args.join(' ')})`);
  const result = spawnSync(npm, args, { cwd, stdio: 'inherit' });
  if (result.status !== 0) process.exit(result.status ?? 1);
}

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(full) : statSync(full).mtimeMs);
  }
  return t;
}

if (!existsSync(path.join(js, 'node_modules', 'centrifuge'))) run(js, 'ci', '--no-audit', '--no-fund');
const built = path.join(js, 'packages', 'react', 'dist', 'esm', 'index.js');
const sources = [path.join(js, 'packages', 'react', 'src'), path.join(js, 'packages', 'long-poll', 'src')];
if (!existsSync(built) || Math.max(...sources.map(newest)) > statSync(built).mtimeMs) run(js, 'run', 'build');
if (!existsSync(path.join(here, 'node_modules', 'next'))) run(here, 'ci', '--no-audit', '--no-fund');
