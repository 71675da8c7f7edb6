// The backend of the proxy benchmarks (docs/benchmarks.md, "Backend proxies"): the
// cheapest answers a real backend could give, so that what is measured is Tidings'
// side of a proxy call (HTTP client, pool, JSON) plus one loopback round trip.
//
// - connect: the user named by the `session` cookie (the bench config sends it as a
//   static header), else "bench";
// - publish: allowed and unchanged (`{"result": {}}`), so the latency stamp survives.
//
//   node bench/proxy-backend.mjs [PORT]   (default 39081)

import http from 'node:http';

const port = Number(process.argv[2] ?? 39081);
const CONNECT_PREFIX = Buffer.from('{"result":{"user":"');
let connects = 0;
let publishes = 0;

http
  .createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      if (req.url === '/connect') {
        connects += 1;
        const m = /session=([A-Za-z0-9]+)/.exec(req.headers.cookie ?? '');
        body = Buffer.concat([CONNECT_PREFIX, Buffer.from(`${m ? m[1] : 'bench'}"}}`)]);
      } else {
        publishes += 1;
        body = Buffer.from('{"result":{}}');
      }
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      res.end(body);
    });
  })
  .listen(port, '127.0.0.1', () => console.log(`proxy backend on 127.0.0.1:${port}`));

process.on('SIGTERM', () => {
  console.log(`connects ${connects} publishes ${publishes}`);
  process.exit(0);
});
