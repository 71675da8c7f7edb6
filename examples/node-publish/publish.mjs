#!/usr/bin/env node
// Publish one message to a Tidings channel through the server HTTP API.
//
//   node publish.mjs [channel] [data]
//
// Settings come from arguments first, then the environment:
//   TIDINGS_URL      server base URL            (default http://127.0.0.1:8000)
//   TIDINGS_API_KEY  value of http_api.key      (required)
//   TIDINGS_CHANNEL  channel to publish to      (default "news")
//   TIDINGS_DATA     JSON payload               (default {"text":"hello from Node"})
// `data` is parsed as JSON when it parses, and sent as a JSON string otherwise.
// Needs Node 18+ for the global fetch.

const [argChannel, argData] = process.argv.slice(2);

const baseUrl = (process.env.TIDINGS_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
const apiKey = process.env.TIDINGS_API_KEY;
const channel = argChannel || process.env.TIDINGS_CHANNEL || 'news';
const rawData = argData ?? process.env.TIDINGS_DATA ?? '{"text":"hello from Node"}';

if (!apiKey) {
  console.error('TIDINGS_API_KEY is not set (the server prints it at startup, or set http_api.key)');
  process.exit(2);
}

let data;
try {
  data = JSON.parse(rawData);
} catch {
  data = rawData;
}

const response = await fetch(`${baseUrl}/api/publish`, {
  method: 'POST',
  headers: { 'Content-Type': 'application/json', 'X-API-Key': apiKey },
  body: JSON.stringify({ channel, data }),
  signal: AbortSignal.timeout(10_000),
});

const text = await response.text();
if (!response.ok) {
  console.error(`HTTP ${response.status}: ${text}`);
  process.exit(1);
}

const body = JSON.parse(text);
if (body.error) {
  console.error(`API error ${body.error.code}: ${body.error.message}`);
  process.exit(1);
}

// result carries the stream position (offset, epoch) when the channel keeps history.
console.log(JSON.stringify(body.result ?? {}));
