// Benchmark peer: every "msg" event is emitted to every client (io.emit).
// Usage: node server.js [PORT]  (default 3002; 0 picks a free port).
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] ?? 3002);
const server = http.createServer();
const io = new Server(server, { serveClient: false });
io.on("connection", (socket) => {
  socket.on("msg", (data) => io.emit("msg", data));
});
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
