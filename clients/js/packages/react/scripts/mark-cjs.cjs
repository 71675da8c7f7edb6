// The package is "type": "module", so the CommonJS build needs its own package.json
// telling Node that the .js files under it are CommonJS. tsc also puts "use strict"
// above a file's 'use client' directive; put the directive back on the first line,
// where React Server Components bundlers look for it.
const fs = require('node:fs');
const path = require('node:path');

const dir = process.argv[2];
if (!dir) {
  console.error('usage: mark-cjs.cjs <dir>');
  process.exit(2);
}
fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'commonjs' }) + '\n');

const PREFIX = '"use strict";\n\'use client\';\n';
for (const entry of fs.readdirSync(dir, { recursive: true })) {
  const file = path.join(dir, String(entry));
  if (!file.endsWith('.js')) continue;
  const text = fs.readFileSync(file, 'utf8');
  if (text.startsWith(PREFIX)) {
    fs.writeFileSync(file, '\'use client\';\n"use strict";\n' + text.slice(PREFIX.length));
  }
}
