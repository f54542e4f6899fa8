#!/usr/bin/env node
// Load generator for scripts/benchmark.py --client node: the real socket.io-client (the apps'
// client) pairs, checks in and holds connections open, driven one command at a time.
//
// Input: one JSON command per line on stdin. Output: one JSON line per command on stdout, once
// it is done, with the generator's own CPU seconds so far ("cpu", user + system).
//
//   {"op":"pair","url":...,"pairs":N,"concurrency":50,"codeBase":123456,"timers":true,
//    "transports":["websocket"]}
//       Pairs N pairs, `concurrency` at a time: the tracked socket connects and registerCodes,
//       the tracker connects and trackCodes, the tracked socket setTimers (each step waits for
//       its reply). -> {"type":"paired","paired":n,"seconds":s,"errors":{message:count},
//       "steps":{step:ms}}: the mean wait of each step of the pairs that got through it
//       (connect, registerCode, tracker connect, trackCode, setTimers): where pairing time goes.
//   {"op":"loop","duration":D,"drain":2}
//       Every paired tracked socket checks in as fast as it is confirmed (the next checkIn
//       when checkInConfirmed arrives) for D seconds, then waits up to `drain` seconds for the
//       last confirmations. -> {"type":"looped","sent","confirmed","received","errors","seconds"}
//   {"op":"open","url":...,"count":N,"concurrency":50,"transports":[...],"upgrade":true}
//       Opens N plain Socket.IO connections and holds them (no events); with "upgrade", each
//       starts on the first transport and counts as open once upgraded to websocket.
//       -> {"type":"opened","opened":n,"seconds":s,"errors":{...}}
//   {"op":"churn","url":...,"count":N,"concurrency":50,"transports":["websocket"]}
//       N trackers of the paired pairs, in turn, disconnect and come back on a new socket
//       (reconnectSession as tracker), `concurrency` at a time: a flaky phone's reconnect.
//       -> {"type":"churned","churned":n,"seconds":s,"errors":{...},"steps":{step:ms}}
//   {"op":"close"}   disconnects every socket -> {"type":"closed"}
//   {"op":"exit"}    disconnects every socket and exits
//
// Every socket has its own Manager (forceNew), reconnection off: a socket that drops counts as
// an error ("disconnected: <reason>"), it is not replaced.
"use strict";

const readline = require("readline");
const { io } = require("socket.io-client");
const clientVersion = require("socket.io-client/package.json").version;

const STEP_TIMEOUT_MS = 20000;
const TIMERS = { reminderTimeMinutes: 60, alertTimeMinutes: 120 };

let sockets = [];
let pairs = [];
let loop = null; // the closed loop's counters while it runs
let errors = new Map();
let churned = 0; // trackers replaced so far, so that the next churn takes the next ones

function error(message) {
  const key = String(message).slice(0, 120);
  errors.set(key, (errors.get(key) || 0) + 1);
}

function takeErrors() {
  const out = Object.fromEntries(errors);
  errors = new Map();
  return out;
}

function cpuSeconds() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

function reply(obj) {
  process.stdout.write(JSON.stringify({ ...obj, cpu: cpuSeconds() }) + "\n");
}

function open(url, transports, upgrade) {
  const socket = io(url, {
    transports,
    upgrade: Boolean(upgrade),
    forceNew: true,
    reconnection: false,
    timeout: STEP_TIMEOUT_MS,
  });
  sockets.push(socket);
  socket.on("disconnect", (reason) => {
    if (!socket.benchClosing) error(`disconnected: ${reason}`);
  });
  return socket;
}

// Resolves with the first argument of `event` on `socket`; rejects on `error` or after the timeout.
function next(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(reject, new Error(`no ${event} within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
    const onEvent = (data) => done(resolve, data);
    const onError = (data) => done(reject, new Error(`error: ${typeof data === "string" ? data : JSON.stringify(data)}`));
    const onConnectError = (err) => done(reject, new Error(`connect_error: ${err && err.message}`));
    function done(settle, value) {
      clearTimeout(timer);
      socket.off(event, onEvent);
      socket.off("error", onError);
      socket.off("connect_error", onConnectError);
      settle(value);
    }
    socket.once(event, onEvent);
    socket.once("error", onError);
    socket.once("connect_error", onConnectError);
  });
}

function connected(socket) {
  return socket.connected ? Promise.resolve() : next(socket, "connect");
}

function upgraded(socket) {
  return new Promise((resolve, reject) => {
    const engine = socket.io.engine;
    if (!engine) return reject(new Error("no engine"));
    if (engine.transport && engine.transport.name === "websocket") return resolve();
    const timer = setTimeout(() => reject(new Error(`no upgrade within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
    engine.once("upgrade", () => {
      clearTimeout(timer);
      resolve();
    });
    engine.once("upgradeError", (err) => {
      clearTimeout(timer);
      reject(new Error(`upgradeError: ${err && err.message}`));
    });
  });
}

// Runs `task(n)` for n in [0, count), `concurrency` at a time; failures are counted as errors.
async function pool(count, concurrency, task) {
  let nextIndex = 0;
  async function worker() {
    while (nextIndex < count) {
      const n = nextIndex++;
      try {
        await task(n);
      } catch (err) {
        error(err && err.message);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
}

// Per step of a pairing: the sum of its waits (ms) and how many got through it.
function stepClock() {
  const steps = {};
  return {
    async time(name, promise) {
      const started = process.hrtime.bigint();
      const value = await promise;
      const step = steps[name] || (steps[name] = { ms: 0, count: 0 });
      step.ms += Number(process.hrtime.bigint() - started) / 1e6;
      step.count += 1;
      return value;
    },
    means() {
      return Object.fromEntries(Object.entries(steps).map(([name, s]) => [name, s.ms / s.count]));
    },
  };
}

async function pair(cmd) {
  const started = process.hrtime.bigint();
  const clock = stepClock();
  await pool(cmd.pairs, cmd.concurrency || 50, async (n) => {
    const code = String(100000 + ((cmd.codeBase + n) % 900000));
    const tracked = open(cmd.url, cmd.transports, false);
    await clock.time("connect", connected(tracked));
    const registered = next(tracked, "codeRegistered");
    tracked.emit("registerCode", code);
    await clock.time("registerCode", registered);
    const tracker = open(cmd.url, cmd.transports, false);
    await clock.time("tracker_connect", connected(tracker));
    const tracking = next(tracker, "trackingStarted");
    tracker.emit("trackCode", code);
    const { sessionToken } = await clock.time("trackCode", tracking);
    if (cmd.timers) {
      const set = next(tracked, "timersSet");
      tracked.emit("setTimers", { sessionToken, ...TIMERS });
      await clock.time("setTimers", set);
    }
    const entry = { tracked, tracker, token: sessionToken, outstanding: 0 };
    tracked.on("checkInConfirmed", () => confirmed(entry));
    tracked.on("error", (message) => loopError(entry, message));
    tracker.on("checkInReceived", () => {
      if (loop) loop.received += 1;
    });
    pairs.push(entry);
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  reply({ type: "paired", paired: pairs.length, seconds, errors: takeErrors(), steps: clock.means() });
}

function checkIn(entry) {
  entry.outstanding += 1;
  loop.sent += 1;
  entry.tracked.emit("checkIn", entry.token);
}

function confirmed(entry) {
  if (!loop || entry.outstanding === 0) return;
  entry.outstanding -= 1;
  loop.confirmed += 1;
  if (loop.sending) checkIn(entry);
}

function loopError(entry, message) {
  if (!loop) return;
  error(`error: ${typeof message === "string" ? message : JSON.stringify(message)}`);
  if (entry.outstanding > 0) {
    entry.outstanding -= 1;
    if (loop.sending) checkIn(entry);
  }
}

async function runLoop(cmd) {
  const started = process.hrtime.bigint();
  loop = { sending: true, sent: 0, confirmed: 0, received: 0 };
  for (const entry of pairs) checkIn(entry);
  await new Promise((resolve) => setTimeout(resolve, cmd.duration * 1000));
  loop.sending = false;
  const deadline = Date.now() + (cmd.drain === undefined ? 2 : cmd.drain) * 1000;
  while (Date.now() < deadline && pairs.some((entry) => entry.outstanding > 0)) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const { sent, confirmed: count, received } = loop;
  loop = null;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  reply({ type: "looped", sent, confirmed: count, received, seconds, errors: takeErrors() });
}

// A tracker's phone dropping and coming back: `count` trackers of the paired pairs (taken in
// turn) each disconnect, and a new socket connects and sends reconnectSession as tracker,
// `concurrency` at a time; the new socket is the pair's tracker from then on.
async function churn(cmd) {
  const started = process.hrtime.bigint();
  const clock = stepClock();
  if (!pairs.length) throw new Error("nothing paired to churn");
  await pool(cmd.count, cmd.concurrency || 50, async (n) => {
    const entry = pairs[(churned + n) % pairs.length];
    const old = entry.tracker;
    old.benchClosing = true;
    old.disconnect();
    const tracker = open(cmd.url, cmd.transports, false);
    await clock.time("tracker_connect", connected(tracker));
    const back = next(tracker, "sessionReconnected");
    tracker.emit("reconnectSession", { sessionToken: entry.token, role: "tracker" });
    await clock.time("reconnectSession", back);
    entry.tracker = tracker;
    tracker.on("checkInReceived", () => {
      if (loop) loop.received += 1;
    });
  });
  churned += cmd.count;
  sockets = sockets.filter((socket) => !socket.benchClosing);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  reply({ type: "churned", churned: cmd.count, seconds, errors: takeErrors(), steps: clock.means() });
}

async function openIdle(cmd) {
  const started = process.hrtime.bigint();
  let opened = 0;
  await pool(cmd.count, cmd.concurrency || 50, async () => {
    const socket = open(cmd.url, cmd.transports, cmd.upgrade);
    const upgrade = cmd.upgrade ? upgraded(socket) : null;
    await connected(socket);
    if (upgrade) await upgrade;
    opened += 1;
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  reply({ type: "opened", opened, seconds, errors: takeErrors() });
}

function closeAll() {
  for (const socket of sockets) {
    socket.benchClosing = true;
    socket.disconnect();
  }
  sockets = [];
  pairs = [];
  churned = 0;
}

const handlers = {
  pair,
  loop: runLoop,
  open: openIdle,
  churn,
  close: async () => {
    closeAll();
    reply({ type: "closed", errors: takeErrors() });
  },
  exit: async () => {
    closeAll();
    setTimeout(() => process.exit(0), 100); // the disconnect packets go out first
  },
};

// One command at a time, in order: the benchmark waits for each reply.
let queue = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let cmd = null;
    try {
      cmd = JSON.parse(line);
      const handler = handlers[cmd.op];
      if (!handler) throw new Error(`unknown op ${cmd.op}`);
      await handler(cmd);
    } catch (err) {
      reply({ type: "failed", op: cmd && cmd.op, message: String(err && err.message) });
    }
  });
});
rl.on("close", () => handlers.exit());

reply({ type: "ready", version: clientVersion });
