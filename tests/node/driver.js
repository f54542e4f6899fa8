#!/usr/bin/env node
// Drives many socket.io-client sockets from one Node process.
//
// Input: one JSON command per line on stdin. Output: one JSON report per line on stdout.
// Every report carries "type"; reports about a socket also carry its "id".
//
// Commands
//   {"op":"connect","id":"a","url":"http://127.0.0.1:3000","opts":{...}}
//       Opens a new socket (its own Manager, forceNew). opts are passed to io() on top of the
//       defaults below, which mirror the apps in the field: polling first, then upgrade to websocket.
//   {"op":"emit","id":"a","event":"checkIn","args":["tok"],"ack":7}
//       args may be omitted (the event is sent without payload) and may contain null.
//       With "ack" set, an acknowledgement callback is attached and reported as
//       {"type":"ack","id":"a","ack":7,"args":[...]}.
//   {"op":"disconnect","id":"a"}        client-side socket.disconnect() ("io client disconnect")
//   {"op":"close_transport","id":"a","how":"abort"|"close"}
//       "abort": forcibly drops the TCP connection of the websocket transport (ws.terminate()),
//                like a phone losing its network. The server sees the transport go away.
//       "close": socket.io.engine.close(), a clean close of the Engine.IO connection.
//   {"op":"exit"}                       closes every socket and exits
//
// Reports
//   {"type":"ready","version":"4.8.x"}                   once, at start
//   {"type":"connect","id","sid","transport"}            on every (re)connect
//   {"type":"connect_error","id","message","data"}
//   {"type":"disconnect","id","reason","description"}
//   {"type":"upgrade","id","transport"}                  the Engine.IO transport was upgraded
//   {"type":"event","id","event","args"}                 every event the server emitted
//   {"type":"ack","id","ack","args"}
//   {"type":"done","seq"}                                after a command that carried "seq"
//   {"type":"error","id","op","seq","message"}           a command could not be carried out
"use strict";

const readline = require("readline");
const { io } = require("socket.io-client");
const clientVersion = require("socket.io-client/package.json").version;

const DEFAULT_OPTS = {
  transports: ["polling", "websocket"],
  upgrade: true,
  forceNew: true,
  reconnection: true,
};

const sockets = new Map();

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Functions (a server-requested ack callback) cannot travel as JSON; report them as a marker.
function plain(args) {
  return args.map((a) => (typeof a === "function" ? { __ack_requested__: true } : a));
}

function transportName(socket) {
  const engine = socket.io && socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function connect(cmd) {
  if (sockets.has(cmd.id)) throw new Error(`socket ${cmd.id} already exists`);
  const id = cmd.id;
  const socket = io(cmd.url, { ...DEFAULT_OPTS, ...(cmd.opts || {}) });
  sockets.set(id, socket);

  // The Manager opens a new Engine.IO socket on every (re)connection.
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    engine.on("upgrade", (transport) => report({ type: "upgrade", id, transport: transport.name }));
  });
  socket.on("connect", () => {
    report({ type: "connect", id, sid: socket.id, transport: transportName(socket) });
  });
  socket.on("connect_error", (err) => {
    report({
      type: "connect_error",
      id,
      message: err && err.message,
      data: err && err.data !== undefined ? err.data : null,
    });
  });
  socket.on("disconnect", (reason, details) => {
    let description = null;
    if (details && details.description !== undefined) {
      description = String(details.description && details.description.message
        ? details.description.message
        : details.description);
    }
    report({ type: "disconnect", id, reason, description });
  });
  socket.onAny((event, ...args) => {
    report({ type: "event", id, event, args: plain(args) });
  });
}

function socketOf(cmd) {
  const socket = sockets.get(cmd.id);
  if (!socket) throw new Error(`no socket ${cmd.id}`);
  return socket;
}

function emit(cmd) {
  const socket = socketOf(cmd);
  const args = Array.isArray(cmd.args) ? cmd.args.slice() : [];
  if (cmd.ack !== undefined && cmd.ack !== null) {
    args.push((...res) => report({ type: "ack", id: cmd.id, ack: cmd.ack, args: plain(res) }));
  }
  socket.emit(cmd.event, ...args);
}

function closeTransport(cmd) {
  const socket = socketOf(cmd);
  const engine = socket.io.engine;
  if (!engine) throw new Error(`socket ${cmd.id} has no engine`);
  const how = cmd.how || "abort";
  if (how === "close") {
    engine.close();
    return;
  }
  const transport = engine.transport;
  if (!transport || transport.name !== "websocket" || !transport.ws) {
    throw new Error(`abort needs a websocket transport, socket ${cmd.id} uses ${transport && transport.name}`);
  }
  transport.ws.terminate(); // drops the TCP connection without a close frame
}

function shutdown() {
  for (const socket of sockets.values()) socket.disconnect();
  sockets.clear();
  // Let the disconnect packets go out before leaving.
  setTimeout(() => process.exit(0), 50);
}

const handlers = {
  connect,
  emit,
  disconnect: (cmd) => socketOf(cmd).disconnect(),
  close_transport: closeTransport,
  exit: shutdown,
};

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    report({ type: "error", op: null, id: null, message: `bad JSON: ${err.message}` });
    return;
  }
  const handler = handlers[cmd.op];
  try {
    if (!handler) throw new Error(`unknown op ${cmd.op}`);
    handler(cmd);
  } catch (err) {
    report({
      type: "error",
      op: cmd.op,
      id: cmd.id === undefined ? null : cmd.id,
      seq: cmd.seq === undefined ? null : cmd.seq,
      message: err.message,
    });
  }
  if (cmd.seq !== undefined) report({ type: "done", seq: cmd.seq });
});
rl.on("close", shutdown);

report({ type: "ready", version: clientVersion });
