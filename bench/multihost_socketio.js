// The Socket.IO peer of bench/multihost.py: one plain `node` process per simulated host, HOST and PORT from the
// environment, broadcasts relayed between hosts by @socket.io/redis-adapter (REDIS_URL). Same roles as the wsup
// app: role=sub joins the room, role=pub publishes every "publish" event to it.
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const pubClient = createClient({ url: process.env.REDIS_URL });
const subClient = pubClient.duplicate();
Promise.all([pubClient.connect(), subClient.connect()]).then(() => {
  const server = http.createServer((req, res) => res.end("ok " + process.pid));
  const io = new Server(server, {
    adapter: createAdapter(pubClient, subClient),
    transports: ["websocket"],
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    if (socket.handshake.query.role === "pub") {
      socket.on("publish", (payload) => io.to("bench").emit("msg", payload));
    } else {
      socket.join("bench");
    }
    socket.emit("ready", process.pid);
  });
  server.listen(+process.env.PORT, process.env.HOST, () => console.log("ready " + process.pid));
});
