// A reconnect storm of the stock Socket.IO client: N clients at once, with the client's default
// transports (long-polling first, then the upgrade to WebSocket) unless TRANSPORTS says otherwise;
// each joins a room of two with the tutorial's event 'room'. Prints one JSON line: how many
// connected and upgraded, and when the last of them did (ms from the start).
//
//   (cd tests/js && npm ci)      # socket.io-client, as the tests use it
//   node docs/socketio_storm.js http://127.0.0.1:3000 4000 [polling,websocket | websocket]
//
// The server's CPU is read apart (docs/benchmarks.md gives the commands); this process is the load.
const path = require('path');
const { io } = require(path.join(__dirname, '..', 'tests', 'js', 'node_modules', 'socket.io-client'));

const [url, count, transports] = process.argv.slice(2);
const clients = Number(count);
if (!url || !Number.isInteger(clients) || clients < 1) {
  process.stderr.write('usage: node docs/socketio_storm.js URL CLIENTS [TRANSPORTS]  (e.g. http://127.0.0.1:3000 4000)\n');
  process.exit(2);
}
const options = { reconnection: false, timeout: 60000, forceNew: true };
if (transports) options.transports = transports.split(',');

const started = process.hrtime.bigint();
const elapsed = () => Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10;
const result = { clients, connected: 0, upgraded: 0, errors: 0, all_connected_ms: null, all_upgraded_ms: null };
const sockets = [];

function upgraded() {
  result.upgraded += 1;
  if (result.upgraded === clients) result.all_upgraded_ms = elapsed();
}

for (let index = 0; index < clients; index += 1) {
  const socket = io(url, options);
  sockets.push(socket);
  socket.on('connect', () => {
    result.connected += 1;
    if (result.connected === clients) result.all_connected_ms = elapsed();
    socket.emit('room', `storm-${Math.floor(index / 2)}`);
    const engine = socket.io.engine;
    if (engine.transport.name === 'websocket') upgraded();
    else engine.once('upgrade', upgraded);
  });
  socket.on('connect_error', () => {
    result.errors += 1;
  });
}

const LIMIT_MS = 120000;
const watch = setInterval(() => {
  const done = result.all_connected_ms !== null && result.all_upgraded_ms !== null;
  const failed = result.errors > 0 && result.connected + result.errors >= clients;
  if (done || failed || elapsed() > LIMIT_MS) {
    clearInterval(watch);
    process.stdout.write(JSON.stringify(result) + '\n');
    for (const socket of sockets) socket.disconnect();
    setTimeout(() => process.exit(done ? 0 : 1), 500);
  }
}, 50);
