#!/usr/bin/env node
// An OJS worker in plain amqplib, following docs/amqp-protocol.md ("Working"):
//
//   node worker.js --url amqp://guest:guest@127.0.0.1:5672/ --prefix acme --queue email \
//                  --count 3 [--fail-attempts 1] [--concurrency 2] [--timeout-ms 30000]
//
// Each option may come from the environment instead (OJS_AMQP_URL, OJS_PREFIX, OJS_QUEUE,
// OJS_COUNT, OJS_FAIL_ATTEMPTS, OJS_CONCURRENCY, OJS_TIMEOUT_MS).
//
// It announces its queue (hello), listens for cancellations, consumes `ojs.queue.{q}` with
// manual acks, and reports each outcome to `ojs.exchange.direct` with key `control.{q}`
// (persistent, mandatory, confirmed) before it acks. The "handler" sums the job's numeric
// args; attempts up to --fail-attempts fail instead, and the daemon retries them.
// It exits 0 after --count completions, 1 on any error or once --timeout-ms has passed.
// Stdout: one JSON object per line, {"event": "completed" | "failed" | "dropped", ...}.

'use strict';

const os = require('node:os');
const amqp = require('amqplib');
const { Channel, cli, emit, fail, namer } = require('./ojs');

// The handler: the sum of the numeric args, or an error for attempts up to failAttempts.
function handle(job, attempt, failAttempts) {
  if (attempt <= failAttempts) {
    const error = new Error(`attempt ${attempt} fails on purpose`);
    error.code = 'flaky';
    throw error;
  }
  const numbers = (job.args || []).filter((a) => typeof a === 'number');
  return { sum: numbers.reduce((a, b) => a + b, 0), handled_by: 'node', attempt };
}

async function main() {
  const { options } = cli({ 'fail-attempts': '0', concurrency: '1' });
  const count = Number.parseInt(options.count, 10);
  const failAttempts = Number.parseInt(options['fail-attempts'], 10);
  const t = namer(options.prefix);
  const q = options.queue;
  const workerId = `node-${os.hostname()}-${process.pid}`;

  const timer = setTimeout(
    () => fail(new Error(`timed out after ${options['timeout-ms']} ms`)),
    Number.parseInt(options['timeout-ms'], 10),
  );
  const connection = await amqp.connect(options.url);
  const ch = await Channel.open(connection);

  // Make sure the daemon knows the queue: it declares it and watches its control queue.
  const hello = await ch.control(t, 'ojs.control.hello', { queues: [q], worker_id: workerId });
  if (hello.error) throw new Error(`hello refused: ${JSON.stringify(hello.error)}`);

  // Cancellations of this queue's jobs: remember them, and drop such a job if it comes.
  const cancelled = new Set();
  const listener = await ch.channel.assertQueue('', { exclusive: true, autoDelete: true });
  await ch.channel.bindQueue(listener.queue, t('ojs.exchange.workers'), `cancel.${q}`);
  await ch.channel.consume(
    listener.queue,
    (message) => {
      if (message) cancelled.add(JSON.parse(message.content.toString('utf8')).job_id);
    },
    { noAck: true },
  );

  let completed = 0;
  let allDone;
  const done = new Promise((resolve) => {
    allDone = resolve;
  });

  async function work(message) {
    const job = JSON.parse(message.content.toString('utf8'));
    const headers = message.properties.headers || {};
    const attempt = Number(headers['x-ojs-attempt'] || 1);
    if (cancelled.has(job.id)) {
      ch.channel.ack(message);
      emit({ event: 'dropped', job_id: job.id });
      return;
    }
    const report = {
      job_id: job.id,
      worker_id: workerId,
      copy: headers['x-ojs-copy'],
      attempt,
      started_at: new Date().toISOString(),
      job, // lets the daemon adopt a job pushed straight to the exchange
    };
    let type = 'ojs.report.completed';
    try {
      report.result = handle(job, attempt, failAttempts);
    } catch (err) {
      type = 'ojs.report.failed';
      report.error = { code: err.code || 'handler_error', message: err.message, type: 'Error' };
    }
    // Report, wait for the confirm, then ack: a crash in between means a redelivery (and a
    // second report the daemon ignores), never a lost outcome.
    await ch.publish(t('ojs.exchange.direct'), `control.${q}`, report, {
      type,
      contentType: 'application/json',
    });
    ch.channel.ack(message);
    if (report.error) {
      emit({ event: 'failed', job_id: job.id, attempt, error: report.error });
      return;
    }
    emit({ event: 'completed', job_id: job.id, attempt, result: report.result });
    completed += 1;
    if (completed >= count) allDone();
  }

  const running = new Set();
  await ch.channel.prefetch(Number.parseInt(options.concurrency, 10));
  const { consumerTag } = await ch.channel.consume(t(`ojs.queue.${q}`), (message) => {
    if (message === null) fail(new Error('RabbitMQ cancelled the consumer'));
    const job = work(message).catch(fail);
    running.add(job);
    job.finally(() => running.delete(job));
  });
  if (count > 0) await done;

  // Take no more jobs, let the ones in hand finish (report and ack), then leave.
  await ch.channel.cancel(consumerTag);
  await Promise.all(running);
  clearTimeout(timer);
  await connection.close();
}

main().catch(fail);
