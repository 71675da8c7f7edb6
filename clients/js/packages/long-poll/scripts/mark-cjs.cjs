// The package is "type": "module", so the CommonJS build needs its own package.json
// telling Node that the .js files under it are CommonJS.
const fs = require('node:fs');
const path = require('node:path');

const dir = process.argv[2];
if (!dir) {
  console.error('usage: mark-cjs.cjs <dir>');
  process.exit(2);
}
fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'commonjs' }) + '\n');
