// All Is Well demo: a tracked person and a tracker in a browser tab each.
//
// Builds its UI into #all-is-well-demo and connects to the server that served this script (so a
// page on any origin can embed it), polling first and then upgrading, like the apps do.
(function () {
  "use strict";

  var script = document.currentScript;
  var server = new URL(script.src).origin;
  var root = document.getElementById("all-is-well-demo") || document.body;

  root.innerHTML =
    '<h1>All Is Well</h1>' +
    '<p>Server <code data-role="server"></code>: <span id="connection">connecting…</span></p>' +
    '<section><h2>I am checked on</h2>' +
    '<p><button id="register">Show my code</button><output id="code"></output></p>' +
    '<p><button id="check-in" disabled>I am well: check in</button></p>' +
    '<p>Remind after <input id="reminder" value="1"> min, alert after ' +
    '<input id="alert" value="2"> min <button id="set-timers" disabled>Set timers</button></p>' +
    '</section>' +
    '<section><h2>I check on someone</h2>' +
    '<p><input id="track-code" inputmode="numeric" maxlength="6" placeholder="6-digit code">' +
    '<button id="track">Pair</button></p>' +
    '</section>' +
    '<h2>What happened</h2><ol id="log"></ol>';
  root.querySelector('[data-role="server"]').textContent = server;

  var $ = function (id) { return document.getElementById(id); };
  var state = { role: null, token: null, code: null, lastCheckIn: null, alertShownFor: undefined, poll: null };
  var transports = [];

  var socket = io(server, { transports: ["polling", "websocket"], upgrade: true });
  window.allIsWellDemo = { socket: socket, transports: transports, state: state };

  function log(event, text) {
    var item = document.createElement("li");
    item.dataset.event = event;
    item.textContent = new Date().toLocaleTimeString() + "  " + text;
    $("log").appendChild(item);
  }

  function short(token) { return token ? token.slice(0, 8) + "…" : ""; }
  function time(ms) { return ms == null ? "never" : new Date(ms).toLocaleTimeString(); }

  function showConnection() {
    var name = socket.io.engine && socket.io.engine.transport.name;
    $("connection").textContent = socket.connected ? "connected over " + name : "disconnected";
    $("connection").dataset.transport = socket.connected ? name : "";
  }

  function paired(role, token) {
    state.role = role;
    state.token = token;
    $("check-in").disabled = role !== "tracked";
    $("set-timers").disabled = role !== "tracked";
    if (role === "tracker" && state.poll === null) {
      // The apps poll getStatus; a missed check-in may also be pushed as checkInMissed.
      state.poll = setInterval(function () {
        if (socket.connected) socket.emit("getStatus", { sessionToken: state.token });
      }, 1000);
    }
  }

  // One alert per missed check-in, whether it was pushed or found by polling.
  function alertOnce() {
    if (state.alertShownFor === state.lastCheckIn) return;
    state.alertShownFor = state.lastCheckIn;
    log("alert", "Missed check-in: last one " + time(state.lastCheckIn));
  }

  // Every transport each connection used, in order: "polling", then "websocket" after the upgrade.
  socket.io.on("open", function () {
    var engine = socket.io.engine;
    transports.push(engine.transport.name);
    engine.on("upgrade", function (transport) {
      transports.push(transport.name);
      showConnection();
    });
  });
  socket.on("connect", function () {
    showConnection();
    log("connect", "Connected over " + socket.io.engine.transport.name);
    if (state.token) {
      socket.emit("reconnectSession", { sessionToken: state.token, role: state.role });
    }
  });
  socket.on("disconnect", function (reason) { showConnection(); log("disconnect", reason); });
  socket.on("connect_error", function (err) {
    $("connection").textContent = "cannot connect: " + err.message;
    $("connection").dataset.error = err.message;
  });

  $("register").onclick = function () {
    state.code = state.code || String(100000 + Math.floor(Math.random() * 900000));
    socket.emit("registerCode", state.code);
  };
  $("track").onclick = function () { socket.emit("trackCode", $("track-code").value.trim()); };
  $("check-in").onclick = function () { socket.emit("checkIn", state.token); };
  $("set-timers").onclick = function () {
    socket.emit("setTimers", {
      sessionToken: state.token,
      reminderTimeMinutes: Number($("reminder").value),
      alertTimeMinutes: Number($("alert").value),
    });
  };

  socket.on("codeRegistered", function (p) {
    $("code").textContent = p.code;
    log("codeRegistered", "Your code is " + p.code + ": type it in the other tab");
    if (p.sessionToken) paired("tracked", p.sessionToken);
  });
  socket.on("trackerConnected", function (p) {
    paired("tracked", p.sessionToken);
    log("trackerConnected", "A tracker paired with you (session " + short(p.sessionToken) + ")");
  });
  socket.on("trackingStarted", function (p) {
    paired("tracker", p.sessionToken);
    log("trackingStarted", "Paired: session " + short(p.sessionToken));
  });
  socket.on("checkInConfirmed", function (p) {
    log("checkInConfirmed", "Check-in confirmed at " + time(p.timestamp));
  });
  socket.on("timersSet", function (p) {
    log("timersSet", "Reminder due " + time(p.reminderTimeEnd) + ", alert due " + time(p.alertTimeEnd));
  });
  socket.on("checkInReceived", function (p) {
    state.lastCheckIn = p.timestamp;
    log("checkInReceived", "They checked in at " + time(p.timestamp));
  });
  socket.on("checkInMissed", alertOnce);
  socket.on("statusUpdate", function (p) {
    state.lastCheckIn = p.lastCheckIn;
    if (p.alertExpired) alertOnce();
  });
  socket.on("sessionReconnected", function (p) { log("sessionReconnected", "Back as " + p.role); });
  socket.on("trackedPersonDisconnected", function () {
    log("trackedPersonDisconnected", "The person you check on went offline");
  });
  socket.on("trackerDisconnected", function () { log("trackerDisconnected", "Your tracker went offline"); });
  socket.on("error", function (message) { log("error", String(message)); });
})();
