// What producer.js and worker.js share: command-line options, output, topology names, and a
// confirm channel with RPCs over direct reply-to. Plain amqplib, per docs/amqp-protocol.md.

'use strict';

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');

const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';

// Options from argv, each defaulting to an environment variable (`--fail-attempts` falls
// back to OJS_FAIL_ATTEMPTS). `spec` maps option names to their defaults; the common ones
// (url, prefix, queue, count) are always there. Returns { options, positionals }.
function cli(spec = {}) {
  const defaults = {
    url: 'amqp://guest:guest@127.0.0.1:5672/',
    prefix: '',
    queue: 'default',
    count: '1',
    'timeout-ms': '30000',
    ...spec,
  };
  const options = {};
  for (const [name, fallback] of Object.entries(defaults)) {
    const envName = `OJS_${name.replace(/-/g, '_').toUpperCase()}`;
    const envValue = name === 'url' ? process.env.OJS_AMQP_URL : process.env[envName];
    options[name] = { type: 'string', default: envValue ?? fallback };
  }
  const { values, positionals } = parseArgs({ options, allowPositionals: true });
  return { options: values, positionals };
}

// One JSON object per line on stdout: what the script did.
function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

// Every exchange and queue name carries the daemon's prefix; routing keys never do.
function namer(prefix) {
  return (name) => (prefix ? `${prefix}.${name}` : name);
}

// A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, version 7, variant 10, random rest.
function uuidv7() {
  const bytes = crypto.randomBytes(16);
  bytes.writeUIntBE(Date.now(), 0, 6);
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  const parts = [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20)];
  return [...parts, hex.slice(20)].join('-');
}

// A confirm channel that also takes answers through direct reply-to, and turns a returned
// (unroutable) mandatory publish into an error.
class Channel {
  constructor(channel) {
    this.channel = channel;
    this.waiting = new Map(); // correlation id -> function taking the answer
    this.returned = new Set(); // message ids RabbitMQ returned as unroutable
    // RabbitMQ sends Basic.Return before the confirm of the same publish.
    channel.on('return', (message) => this.returned.add(message.properties.messageId));
  }

  static async open(connection) {
    const self = new Channel(await connection.createConfirmChannel());
    await self.channel.consume(DIRECT_REPLY_TO, (message) => self.onReply(message), {
      noAck: true,
    });
    return self;
  }

  onReply(message) {
    if (message === null) return;
    const take = this.waiting.get(message.properties.correlationId);
    if (take) take(JSON.parse(message.content.toString('utf8')));
  }

  // Publish `body` (an object, sent as UTF-8 JSON) persistent and mandatory; resolves once
  // the broker has confirmed it and did not return it as unroutable.
  publish(exchange, key, body, properties) {
    const messageId = properties.messageId || crypto.randomUUID();
    const content = Buffer.from(JSON.stringify(body), 'utf8');
    const props = { ...properties, messageId, persistent: true, mandatory: true };
    return new Promise((resolve, reject) => {
      this.channel.publish(exchange, key, content, props, (err) => {
        const where = `${exchange || '(default exchange)'} with key ${key}`;
        if (err) reject(new Error(`the broker nacked a publish to ${where}`));
        else if (this.returned.delete(messageId)) reject(new Error(`unroutable: ${where}`));
        else resolve();
      });
    });
  }

  // Publish with reply_to + correlation_id and resolve with the daemon's answer (an object
  // with `job`, `queues` or `error`).
  async rpc(exchange, key, properties, body, timeoutMs = 10000) {
    const correlationId = crypto.randomUUID();
    let timer;
    const answer = new Promise((resolve, reject) => {
      this.waiting.set(correlationId, resolve);
      timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    });
    answer.catch(() => {}); // awaited below, once the publish is confirmed
    try {
      await this.publish(exchange, key, body, {
        ...properties,
        correlationId,
        replyTo: DIRECT_REPLY_TO,
      });
      return await answer;
    } finally {
      clearTimeout(timer);
      this.waiting.delete(correlationId);
    }
  }

  // A control message (docs/amqp-protocol.md "Control messages") to ojs.control, as an RPC.
  control(t, type, body) {
    return this.rpc('', t('ojs.control'), { type, contentType: 'application/json' }, body);
  }
}

// Log the error and exit 1: any failure fails the test that ran the script.
function fail(err) {
  console.error(err);
  process.exit(1);
}

module.exports = { Channel, cli, emit, fail, namer, uuidv7 };
