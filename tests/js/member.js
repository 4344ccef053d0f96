// A Socket.IO member driven by a test: the stock socket.io client for Node.
//
//   node member.js URL [TRANSPORTS]     e.g. node member.js http://127.0.0.1:8080 polling,websocket
//
// Reads one JSON command per line on stdin:   {"emit": "room", "args": ["r1"], "ack": true}
//                                              {"disconnect": true}
// Writes one JSON line per happening on stdout: {"connect": true, "transport": "polling"}
//   {"upgrade": "websocket"}  {"event": NAME, "args": [...]}  {"ack": [...]}
//   {"connect_error": MESSAGE}  {"disconnect": REASON}
// It exits when stdin ends or the socket is disconnected.
const readline = require('readline');
const { io } = require('socket.io-client');

const [url, transports] = process.argv.slice(2);
const options = { reconnection: false, timeout: 10000 };
if (transports) options.transports = transports.split(',');
const socket = io(url, options);
const say = (what) => process.stdout.write(JSON.stringify(what) + '\n');

socket.on('connect', () => {
  const engine = socket.io.engine;
  say({ connect: true, transport: engine.transport.name });
  engine.on('upgrade', (transport) => say({ upgrade: transport.name }));
});
socket.on('connect_error', (error) => {
  say({ connect_error: error.message });
  process.exit(0);
});
socket.on('disconnect', (reason) => {
  say({ disconnect: reason });
  process.exit(0);
});
socket.onAny((event, ...args) => say({ event, args }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line);
  if (command.disconnect) {
    socket.disconnect();
  } else if (command.ack) {
    socket.emit(command.emit, ...(command.args || []), (...answer) => say({ ack: answer }));
  } else {
    socket.emit(command.emit, ...(command.args || []));
  }
}).on('close', () => {
  socket.disconnect();
  process.exit(0);
});
