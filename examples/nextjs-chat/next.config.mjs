import path from 'node:path';
import { fileURLToPath } from 'node:url';

// @tidings/react comes from this repository (clients/js/packages/react) through a file:
// dependency, so the bundler's root is the repository, not this folder.
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** @type {import('next').NextConfig} */
const nextConfig = {
  turbopack: { root: repo },
  outputFileTracingRoot: repo,
};

export default nextConfig;
