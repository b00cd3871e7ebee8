// Execution times per job type (fetch to ack): p50, p99 and mean from the daemon's
// histogram, slowest types first.

import { metrics } from "./api.js";
import { durations } from "./data.js";
import { fmtSeconds, h, table } from "./ui.js";

export async function render(main, { live }) {
  const list = h("div", { id: "timings" });
  main.replaceChildren(h("h1", {}, "Execution times by job type"),
    h("p", { class: "muted" }, "Fetch to acknowledgement since the daemon started, from its "
      + "ojs_job_duration_seconds histogram (quantiles interpolated inside buckets); slowest p99 first."),
    list);

  async function refresh() {
    const types = durations(await metrics()).sort((a, b) => b.p99 - a.p99 || b.mean - a.mean);
    list.replaceChildren(table([
      { label: "type", cell: (t) => h("code", {}, t.type) },
      { label: "queues", narrow: true, cell: (t) => t.queues.join(", ") },
      { label: "jobs", num: true, cell: (t) => String(t.count) },
      { label: "p50", num: true, cell: (t) => fmtSeconds(t.p50) },
      { label: "p99", num: true, cell: (t) => fmtSeconds(t.p99) },
      { label: "mean", num: true, cell: (t) => fmtSeconds(t.mean) },
    ], types, { caption: "Execution times", empty: "No job has finished since the daemon started." }));
  }

  await refresh();
  live.every(10000, refresh);
}
