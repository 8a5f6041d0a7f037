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
    this.onError = options.onError || function (error) { console.error(error); };
    this.storage = options.storage || global.localStorage;
    this.key = options.key || "surelay.push.cursor." + device;
    var saved = this.storage.getItem(this.key);
    this.acked = saved === null ? null : Number(saved);  // null: the server's cursor
    this.failures = 0;
    this.closed = false;
    this.blocked = null;
    this.chain = Promise.resolve();
    this.connect();
  }

  SurelayPush.prototype.connect = function () {
    var self = this;
    var ws = new WebSocket(this.url, "surelay.push.v1");
    this.ws = ws;
    ws.onopen = function () {
      var hello = { t: "hello", v: 1, token: self.token, device: self.device };
      if (self.acked !== null) hello.resume = { acked: self.acked };
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (event) {
      var frame = JSON.parse(event.data);
      if (frame.t === "ping") {
        ws.send('{"t":"pong"}');
      } else if (frame.t === "welcome") {
        self.failures = 0;
        if (self.acked === null) self.acked = frame.acked;
      } else if (frame.t === "msg" || frame.t === "gap") {
        // one at a time, in order: the next waits for the app to finish this one; a
        // handler that fails leaves its message unacked (it comes again), the rest go on
        self.chain = self.chain
          .then(function () { return self.handle(ws, frame); })
          .catch(function (error) { self.onError(error); });
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
    if (this.blocked !== null && frame.seq !== this.blocked) {
      // a message before it failed: in order, nothing after it until it is sent again
      return Promise.resolve();
    }
    // (a handler that throws at once fails like one whose promise rejects)
    return new Promise(function (resolve) { resolve(self.onMessage(message)); }).then(function () {
      self.blocked = null;
      self.ack(ws, frame.seq);
    }, function (error) {
      self.blocked = frame.seq;  // unacked: the server sends it (and what follows) again
      throw error;
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
