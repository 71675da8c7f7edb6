// Benchmark peer: every text frame received on /ws is sent to every client.
// Usage: node server.js [PORT]  (default 3001; 0 picks a free port).
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] ?? 3001);
const wss = new WebSocketServer({ host: "127.0.0.1", port, path: "/ws" });
wss.on("listening", () => {
  console.log(`listening on 127.0.0.1:${wss.address().port}`);
});
wss.on("connection", (socket) => {
  socket.on("message", (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === 1) client.send(data, { binary: isBinary });
    }
  });
});
