// Workers: HTTP workers (seen through fetch and heartbeats) and native AMQP workers, their
// state, queues and the jobs each holds.

import { ADMIN, get, rows, served } from "./api.js";
import { ago, badge, h, link, needsAdmin, table } from "./ui.js";

export async function render(main, { live }) {
  const summary = h("p", { class: "muted", id: "workers-summary" });
  const list = h("div", { id: "workers" });
  main.replaceChildren(h("h1", {}, "Workers"), summary, list);
  if (!served.admin) {
    list.replaceChildren(needsAdmin("The worker registry"));
    return;
  }

  async function refresh() {
    const answer = await get(`${ADMIN}/workers?per_page=100`);
    const items = rows(answer, "workers");
    const s = answer.summary || {};
    summary.textContent = Object.entries(s).map(([k, v]) => `${k} ${v}`).join(" · ") || `${items.length} workers`;
    list.replaceChildren(table([
      { label: "worker", cell: (w) => h("code", {}, w.id || w.worker_id) },
      { label: "kind", cell: (w) => w.kind || w.protocol || w.transport || "—" },
      { label: "host", narrow: true, cell: (w) => w.hostname || "—" },
      { label: "state", cell: (w) => badge(w.state || "unknown") },
      { label: "queues", cell: (w) => (w.queues || []).join(", ") || "—" },
      { label: "holds", cell: (w) => {
        const held = w.job_ids || w.active_job_ids || w.jobs || [];
        if (held.length) return held.map((j) => h("a", { href: link(["job", j.id || j]) }, h("code", {}, j.id || j), " "));
        return String(w.active_jobs ?? 0);
      } },
      { label: "last seen", cell: (w) => ago(w.last_heartbeat_at || w.last_seen_at) },
    ], items, { caption: "Workers", empty: "No worker has been seen lately." }));
  }

  await refresh();
  live.every(5000, refresh);
}
