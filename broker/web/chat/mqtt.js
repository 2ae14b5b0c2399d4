// The MQTT 3.1.1 subset the chat page needs, over a WebSocket (subprotocol "mqtt", binary
// frames): CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH at QoS 1 both ways (with PUBACK),
// PINGREQ. Written for this page; not a general client.
const enc = new TextEncoder();
const dec = new TextDecoder();

function str(s) {
  const b = enc.encode(s);
  return [b.length >> 8, b.length & 255, ...b];
}

function packet(first, body) {
  const len = [];
  let n = body.length;
  do { let d = n % 128; n = Math.floor(n / 128); if (n > 0) d |= 128; len.push(d); } while (n > 0);
  return new Uint8Array([first, ...len, ...body]);
}

export class Mqtt {
  /** Connects; resolves once the CONNACK accepted, rejects with the reason otherwise. */
  static connect(url, { clientId, username, password, keepAlive = 30 }) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, "mqtt");
      ws.binaryType = "arraybuffer";
      const c = new Mqtt(ws, keepAlive);
      c._connack = { resolve: () => resolve(c), reject };
      ws.onopen = () => {
        const flags = 0x80 | 0x40 | 0x02; // username, password, clean session
        const body = [...str("MQTT"), 4, flags, keepAlive >> 8, keepAlive & 255,
          ...str(clientId), ...str(username), ...str(password)];
        ws.send(packet(0x10, body));
      };
      ws.onerror = () => reject(new Error("WebSocket error"));
    });
  }

  constructor(ws, keepAlive) {
    this.ws = ws;
    this.buf = new Uint8Array(0);
    this.nextId = 1;
    this.pending = new Map(); // packet id -> resolve
    this.onmessage = () => {};
    this.onclose = () => {};
    ws.onmessage = (ev) => this._data(new Uint8Array(ev.data));
    ws.onclose = () => { clearInterval(this.ping); this.onclose(); };
    this.ping = setInterval(() => this._send(new Uint8Array([0xc0, 0])), (keepAlive * 1000) / 2);
  }

  _send(bytes) { if (this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes); }

  _id() { const id = this.nextId; this.nextId = (this.nextId % 65535) + 1; return id; }

  /** Subscribes at QoS 1; resolves with the SUBACK return code. */
  subscribe(topic) {
    const id = this._id();
    this._send(packet(0x82, [id >> 8, id & 255, ...str(topic), 1]));
    return new Promise((r) => this.pending.set(id, r));
  }

  /** Publishes `text` at QoS 1; resolves on PUBACK. */
  publish(topic, text) {
    const id = this._id();
    this._send(packet(0x32, [...str(topic), id >> 8, id & 255, ...enc.encode(text)]));
    return new Promise((r) => this.pending.set(id, r));
  }

  close() { this._send(new Uint8Array([0xe0, 0])); this.ws.close(); }

  _data(chunk) {
    const all = new Uint8Array(this.buf.length + chunk.length);
    all.set(this.buf); all.set(chunk, this.buf.length);
    let at = 0;
    for (;;) {
      let len = 0, mul = 1, i = at + 1, done = false;
      while (i < all.length && i < at + 5) {
        const b = all[i++]; len += (b & 127) * mul; mul *= 128;
        if (!(b & 128)) { done = true; break; }
      }
      if (!done || i + len > all.length) break;
      this._packet(all[at], all.subarray(i, i + len));
      at = i + len;
    }
    this.buf = all.slice(at);
  }

  _packet(first, body) {
    const kind = first >> 4;
    if (kind === 2) { // CONNACK
      if (body[1] === 0) this._connack.resolve();
      else this._connack.reject(new Error(body[1] === 5 ? "not authorized (check the user id and the token)" : `refused (code ${body[1]})`));
    } else if (kind === 3) { // PUBLISH
      const qos = (first >> 1) & 3;
      const tlen = (body[0] << 8) | body[1];
      const topic = dec.decode(body.subarray(2, 2 + tlen));
      let p = 2 + tlen;
      if (qos > 0) {
        const id = (body[p] << 8) | body[p + 1];
        p += 2;
        this._send(new Uint8Array([0x40, 2, id >> 8, id & 255]));
      }
      this.onmessage(topic, dec.decode(body.subarray(p)));
    } else if (kind === 4 || kind === 9) { // PUBACK, SUBACK
      const id = (body[0] << 8) | body[1];
      const r = this.pending.get(id);
      this.pending.delete(id);
      if (r) r(kind === 9 ? body[2] : 0);
    }
  }
}
