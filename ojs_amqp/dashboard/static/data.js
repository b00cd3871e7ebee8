// What several views read: queues with their counts, and figures from /metrics.

import { ADMIN, V1, adminOr, get, metrics, rows } from "./api.js";

// [{name, paused, counts: {state: n}}]: from the admin API, else from /metrics' depth gauge.
export async function queuesWithCounts() {
  const { data, admin } = await adminOr(`${ADMIN}/queues?per_page=100`, async () => {
    const [list, samples] = await Promise.all([get(`${V1}/queues?limit=200`), metrics()]);
    const byName = new Map(rows(list, "queues").map((q) => [q.name, { name: q.name, counts: {} }]));
    for (const s of samples) {
      if (s.name !== "ojs_queue_depth") continue;
      const q = byName.get(s.labels.queue) || { name: s.labels.queue, counts: {} };
      q.counts[s.labels.state] = s.value;
      byName.set(q.name, q);
    }
    return [...byName.values()];
  });
  const list = rows(data, "queues").map((q) => ({
    ...q,
    counts: q.counts || q.jobs || {},
    paused: q.paused ?? q.state === "paused",
  }));
  list.sort((a, b) => a.name.localeCompare(b.name));
  return { queues: list, admin };
}

// Per job type: count, mean, p50, p99 (seconds) of fetch-to-ack times, from the histogram.
export function durations(samples) {
  const types = new Map();
  for (const s of samples) {
    if (!s.name.startsWith("ojs_job_duration_seconds")) continue;
    const key = s.labels.type;
    const t = types.get(key) || { type: key, queues: new Set(), buckets: new Map(), sum: 0, count: 0 };
    t.queues.add(s.labels.queue);
    if (s.name.endsWith("_bucket")) {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      t.buckets.set(le, (t.buckets.get(le) || 0) + s.value);
    } else if (s.name.endsWith("_sum")) t.sum += s.value;
    else if (s.name.endsWith("_count")) t.count += s.value;
    types.set(key, t);
  }
  return [...types.values()].filter((t) => t.count > 0).map((t) => {
    const bounds = [...t.buckets.entries()].sort((a, b) => a[0] - b[0]);
    return {
      type: t.type,
      queues: [...t.queues].sort(),
      count: t.count,
      mean: t.sum / t.count,
      p50: quantile(bounds, t.count, 0.5),
      p99: quantile(bounds, t.count, 0.99),
    };
  });
}

// The q-quantile of a cumulative histogram, interpolated inside its bucket (as Prometheus does).
function quantile(bounds, count, q) {
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of bounds) {
    if (cumulative >= rank) {
      if (le === Infinity) return lower;
      const inBucket = cumulative - below;
      return inBucket > 0 ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

export function counterTotals(samples) {
  let processed = 0;
  let failed = 0;
  for (const s of samples) {
    if (s.name === "ojs_job_completed_total") processed += s.value;
    if (s.name === "ojs_job_failed_total") failed += s.value;
  }
  return { processed, failed };
}
