// Overview: every queue with its counts by state, throughput over the last hour, and the
// broker link and store state; refreshed every few seconds and on every job event.

import { ADMIN, V1, adminOr, get, metrics, qs, rows } from "./api.js";
import { throughputChart } from "./chart.js";
import { counterTotals, queuesWithCounts } from "./data.js";
import { STATES, badge, h, link, table } from "./ui.js";

const HOUR_MS = 3600_000;

export async function render(main, { live }) {
  const health = h("div", { class: "grid", id: "health" });
  const chartBox = h("div", { class: "chart", id: "throughput" });
  const chartNote = h("p", { class: "muted", id: "throughput-note" });
  const queuesBox = h("div", { id: "queues" });
  main.replaceChildren(
    h("h1", {}, "Overview"),
    health,
    h("section", { class: "card", "aria-labelledby": "tp-h" },
      h("h2", { id: "tp-h" }, "Throughput and failures, last hour"), chartBox, chartNote),
    h("section", { "aria-labelledby": "q-h" }, h("h2", { id: "q-h" }, "Queues"), queuesBox));
  const chart = throughputChart(chartBox);
  const samples = []; // the page's own samples, when the daemon has no stats history
  const started = Date.now();

  async function refreshChart() {
    const since = new Date(Date.now() - HOUR_MS).toISOString();
    const { data, admin } = await adminOr(`${ADMIN}/stats/history${qs({ period: "1m", since })}`,
      async () => {
        const totals = counterTotals(await metrics());
        samples.push({ at: Date.now(), ...totals });
        while (samples.length && samples[0].at < Date.now() - HOUR_MS) samples.shift();
        return null;
      });
    if (admin) {
      const points = rows(data, "data").map((p) => ({
        t: new Date(p.timestamp).getTime() / 1000, processed: p.processed ?? 0, failed: p.failed ?? 0,
      }));
      chart.update(points);
      chartNote.textContent = `${points.length} one-minute points from the daemon's stats history`;
    } else {
      const points = samples.slice(1).map((s, i) => {
        const prev = samples[i];
        const minutes = (s.at - prev.at) / 60_000;
        return { t: s.at / 1000, processed: (s.processed - prev.processed) / minutes,
          failed: (s.failed - prev.failed) / minutes };
      });
      chart.update(points);
      chartNote.textContent = "This daemon keeps no stats history (GET /ojs/v1/admin/stats/history):"
        + ` the chart shows rates sampled from /metrics since this page opened (${
          Math.round((Date.now() - started) / 1000)} s ago).`;
    }
  }

  async function refreshHealth() {
    const answer = await get(`${V1}/health`).catch((err) => ({ status: "unhealthy", error: err.message }));
    const broker = answer.components?.broker || answer.backend || {};
    const store = answer.components?.store || {};
    const workers = answer.workers || {};
    health.replaceChildren(
      h("div", { class: "card", id: "broker" }, h("h2", {}, "Broker link ", badge(broker.status || "unknown")),
        h("dl", { class: "kv" },
          h("dt", {}, "RabbitMQ"), h("dd", {}, broker.version || "—"),
          h("dt", {}, "connected"), h("dd", {}, broker.connected ? "yes" : "no"),
          h("dt", {}, "ping"), h("dd", {}, broker.latency_ms != null ? `${broker.latency_ms} ms` : "—"),
          broker.reason || broker.error ? [h("dt", {}, "why"), h("dd", {}, broker.reason || broker.error)] : null)),
      h("div", { class: "card", id: "store" }, h("h2", {}, "Store ", badge(store.status || "unknown")),
        h("dl", { class: "kv" },
          h("dt", {}, "kind"), h("dd", {}, store.type || "—"),
          h("dt", {}, "answer"), h("dd", {}, store.latency_ms != null ? `${store.latency_ms} ms` : "—"),
          store.error ? [h("dt", {}, "error"), h("dd", {}, store.error)] : null)),
      h("div", { class: "card" }, h("h2", {}, "Daemon ", badge(answer.status || "unknown")),
        h("dl", { class: "kv" },
          h("dt", {}, "version"), h("dd", {}, answer.version || "—"),
          h("dt", {}, "up for"), h("dd", {}, answer.uptime_seconds != null ? `${answer.uptime_seconds} s` : "—"),
          h("dt", {}, "workers"), h("dd", {}, Object.entries(workers).map(([k, v]) => `${k} ${v}`).join(", ") || "none"),
          answer.draining ? [h("dt", {}, "draining"), h("dd", {}, "yes")] : null)));
  }

  async function refreshQueues() {
    const { queues } = await queuesWithCounts();
    const columns = [
      { label: "queue", cell: (q) => [h("a", { href: link(["queue", q.name]) }, q.name), " ",
        q.paused ? badge("paused") : null] },
      ...STATES.map((s) => ({ label: s, num: true, narrow: !["available", "active", "retryable", "discarded"].includes(s),
        cell: (q) => (q.counts[s] ? h("a", { href: link(["queue", q.name], { state: s }) }, String(q.counts[s])) : "0") })),
    ];
    queuesBox.replaceChildren(table(columns, queues, { caption: "Queues", empty: "No queues yet: push a job." }));
  }

  const refreshAll = () => Promise.all([refreshHealth(), refreshQueues(), refreshChart()]);
  await refreshAll();
  live.every(5000, refreshAll);
  let pending = null;
  live.events(`${V1}/events/stream`, () => {
    if (!pending) pending = setTimeout(() => { pending = null; if (!live.stopped) refreshQueues(); }, 500);
  });
  return () => chart.destroy();
}
