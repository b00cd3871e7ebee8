// Cron schedules with their next and last runs.

import { V1, get, rows } from "./api.js";
import { ago, badge, fmtTime, h, table } from "./ui.js";

export async function render(main, { live }) {
  const list = h("div", { id: "crons" });
  main.replaceChildren(h("h1", {}, "Cron schedules"), list);

  async function refresh() {
    const answer = await get(`${V1}/cron?limit=200`);
    list.replaceChildren(table([
      { label: "name", cell: (c) => h("code", {}, c.name) },
      { label: "schedule", cell: (c) => [h("code", {}, c.expression || c.cron), c.timezone ? ` ${c.timezone}` : ""] },
      { label: "job", cell: (c) => `${c.type || c.job_template?.type || "—"} → ${c.options?.queue || c.job_template?.options?.queue || "default"}` },
      { label: "status", cell: (c) => badge(c.status || (c.enabled === false ? "paused" : "active"), c.status === "paused" ? "paused" : "ok") },
      { label: "next run", cell: (c) => [fmtTime(c.next_run_at), h("br"), h("span", { class: "muted" }, ago(c.next_run_at))] },
      { label: "last run", cell: (c) => [fmtTime(c.last_run_at), h("br"), h("span", { class: "muted" }, c.last_run_at ? ago(c.last_run_at) : "never")] },
    ], rows(answer, "crons", "cron_jobs"), { caption: "Cron schedules", empty: "No cron schedules." }));
  }

  await refresh();
  live.every(10000, refresh);
}
