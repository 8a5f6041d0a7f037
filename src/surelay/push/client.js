/* surelay push: the browser client of surelay.push.v1 (served at {mount}/client.js).

   const push = new SurelayPush("wss://example.com/push/ws", token, "browser-1", {
     onMessage: async (message) => { show(message.text()); },  // acked once it resolves
     onClose: (code, reason) => { if (code === 4001) login(); },
   });

   Each message reaches onMessage once, in seq order: the cursor is saved (localStorage)
   before the ack, a seq at or below it is dropped, and the connection is made again with
   back-off when it drops. 4001 (bad or expired token) and 4002 (this device connected
   elsewhere) end it: onClose is told. push.read(seq) marks messages read; push.close(). */
(function (global) {
  "use strict";

  function SurelayPush(url, token, device, options) {
    options = options || {};
    this.url = url;
    this.token = token;
    this.device = device;
    this.onMessage = options.onMessage || function () {};
    this.onClose = options.onClose || function () {};
    this.storage = options.storage || global.localStorage;
    this.key = options.key || "surelay.push.cursor." + device;
    this.acked = Number(this.storage.getItem(this.key) || 0);
    this.failures = 0;
    this.closed = false;
    this.chain = Promise.resolve();
    this.connect();
  }

  SurelayPush.prototype.connect = function () {
    var self = this;
    var ws = new WebSocket(this.url, "surelay.push.v1");
    this.ws = ws;
    ws.onopen = function () {
      ws.send(JSON.stringify({
        t: "hello", v: 1, token: self.token, device: self.device,
        resume: { acked: self.acked },
      }));
    };
    ws.onmessage = function (event) {
      var frame = JSON.parse(event.data);
      if (frame.t === "ping") {
        ws.send('{"t":"pong"}');
      } else if (frame.t === "welcome") {
        self.failures = 0;
      } else if (frame.t === "msg" || frame.t === "gap") {
        // one at a time, in order: the next waits for the app to finish this one
        self.chain = self.chain.then(function () { return self.handle(ws, frame); });
      }
    };
    ws.onclose = function (event) {
      if (self.closed) return;
      if (event.code === 4001 || event.code === 4002) {
        self.closed = true;
        self.onClose(event.code, event.reason);
        return;
      }
      self.failures += 1;
      var delay = Math.min(30000, 500 * Math.pow(2, Math.min(self.failures - 1, 10)));
      setTimeout(function () { if (!self.closed) self.connect(); }, delay * (0.5 + Math.random() / 2));
    };
  };

  SurelayPush.prototype.handle = function (ws, frame) {
    var self = this;
    var upto = frame.t === "msg" ? frame.seq : frame.to;
    if (upto <= this.acked) {
      if (frame.t === "msg") this.ack(ws, this.acked);  // handled before: say so again
      return Promise.resolve();
    }
    if (frame.t === "gap") {
      this.ack(ws, upto);  // removed before this device got them
      return Promise.resolve();
    }
    var message = {
      seq: frame.seq,
      id: frame.id,
      headers: frame.headers || {},
      attempt: frame.attempt,
      data: Uint8Array.from(atob(frame.data), function (c) { return c.charCodeAt(0); }),
      text: function () { return new TextDecoder().decode(this.data); },
    };
    return Promise.resolve(this.onMessage(message)).then(function () {
      self.ack(ws, frame.seq);
    });
  };

  SurelayPush.prototype.ack = function (ws, seq) {
    this.storage.setItem(this.key, String(seq));  // before the ack: a crash resends
    this.acked = seq;
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ t: "ack", upto: seq }));
  };

  SurelayPush.prototype.read = function (upto) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ t: "read", upto: upto }));
    }
  };

  SurelayPush.prototype.close = function () {
    this.closed = true;
    if (this.ws) this.ws.close();
  };

  global.SurelayPush = SurelayPush;
})(typeof window !== "undefined" ? window : globalThis);
