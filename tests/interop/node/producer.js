#!/usr/bin/env node
// An OJS producer in plain amqplib, following docs/amqp-protocol.md ("Producing"):
//
//   node producer.js push   --url amqp://guest:guest@127.0.0.1:5672/ --prefix acme \
//                           --queue email --count 3 [--type T] [--args JSON] [--retry JSON]
//   node producer.js submit (same options)
//
// Each option may come from the environment instead (OJS_AMQP_URL, OJS_PREFIX, OJS_QUEUE,
// OJS_COUNT, OJS_TYPE, OJS_ARGS, OJS_RETRY).
//
// push:   binding PUSH. Announce the queue (hello), then publish `count` job messages (the
//         envelope as the body, the documented properties and headers) to
//         `ojs.exchange.direct` with key `{q}`, mandatory, and wait for every confirm.
//         Prints {"event": "pushed", "job_id": ...} per job.
// submit: publish `count` plain envelopes ({"type", "args"}, no id) to `ojs.exchange.submit`
//         with key `{q}` and reply_to direct reply-to; print the job the daemon accepted,
//         {"event": "accepted", "job": {...}}, or {"event": "refused", "error": {...}}.
// Exits 0 when every job was pushed or accepted, 1 otherwise.

'use strict';

const amqp = require('amqplib');
const { Channel, cli, emit, fail, namer, uuidv7 } = require('./ojs');

// AMQP int32, as the binding types x-ojs-attempt and x-ojs-max-attempts (amqplib would pick
// the smallest integer type that fits).
function int32(value) {
  return { '!': 'int32', value };
}

// The job message of binding PUSH: the OJS envelope and its AMQP properties.
function jobMessage(queue, type, args, retry) {
  const id = uuidv7();
  const now = new Date();
  const envelope = { specversion: '1.0', id, type, queue, args, created_at: now.toISOString() };
  if (retry) envelope.retry = retry;
  const properties = {
    messageId: id,
    type,
    contentType: 'application/openjobspec+json',
    contentEncoding: 'utf-8',
    priority: 4, // OJS priority 0 (docs/amqp-protocol.md, codec.amqp_priority)
    timestamp: Math.floor(now.getTime() / 1000),
    appId: 'ojs',
    headers: {
      'x-ojs-queue': queue,
      'x-ojs-attempt': int32(1),
      'x-ojs-max-attempts': int32(retry?.max_attempts ?? 3),
      'x-ojs-created-at': envelope.created_at,
      'x-ojs-enqueued-at': envelope.created_at,
    },
  };
  return { envelope, properties };
}

async function push(ch, t, queue, count, type, args, retry) {
  const hello = await ch.control(t, 'ojs.control.hello', { queues: [queue] });
  if (hello.error) throw new Error(`hello refused: ${JSON.stringify(hello.error)}`);
  const messages = [];
  for (let i = 0; i < count; i++) messages.push(jobMessage(queue, type, args ?? [i], retry));
  // All publishes in flight at once; each resolves on its own confirm.
  await Promise.all(
    messages.map(({ envelope, properties }) =>
      ch.publish(t('ojs.exchange.direct'), queue, envelope, properties),
    ),
  );
  for (const { envelope } of messages) emit({ event: 'pushed', job_id: envelope.id, queue });
  return true;
}

async function submit(ch, t, queue, count, type, args, retry) {
  let allAccepted = true;
  for (let i = 0; i < count; i++) {
    const envelope = { type, args: args ?? [i] };
    if (retry) envelope.retry = retry;
    const properties = { contentType: 'application/openjobspec+json' };
    const answer = await ch.rpc(t('ojs.exchange.submit'), queue, properties, envelope);
    if (answer.job) {
      emit({ event: 'accepted', job: answer.job });
    } else {
      emit({ event: 'refused', error: answer.error });
      allAccepted = false;
    }
  }
  return allAccepted;
}

async function main() {
  const { options, positionals } = cli({ type: 'interop.node', args: '', retry: '' });
  const mode = positionals[0] || 'push';
  const modes = { push, submit };
  if (!Object.hasOwn(modes, mode)) throw new Error(`unknown mode ${mode}: use push or submit`);
  const args = options.args ? JSON.parse(options.args) : undefined;
  const retry = options.retry ? JSON.parse(options.retry) : undefined;
  const timer = setTimeout(
    () => fail(new Error(`timed out after ${options['timeout-ms']} ms`)),
    Number.parseInt(options['timeout-ms'], 10),
  );

  const count = Number.parseInt(options.count, 10);
  const connection = await amqp.connect(options.url);
  let ok;
  try {
    const ch = await Channel.open(connection);
    const t = namer(options.prefix);
    ok = await modes[mode](ch, t, options.queue, count, options.type, args, retry);
  } finally {
    clearTimeout(timer);
    await connection.close();
  }
  process.exitCode = ok ? 0 : 1;
}

main().catch(fail);
