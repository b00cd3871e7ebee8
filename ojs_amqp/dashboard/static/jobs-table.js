// The job list several views share: id, type, state, attempt, times; optional selection.

import { ago, badge, h, link, table } from "./ui.js";

export function jobsTable(jobs, { selected = null, caption = "Jobs", empty } = {}) {
  const columns = [];
  if (selected) {
    columns.push({
      label: h("input", { type: "checkbox", "aria-label": "select every row on this page",
        class: "select-all",
        onchange: (e) => {
          for (const box of e.target.closest("table").querySelectorAll("input.select-row")) {
            box.checked = e.target.checked;
            box.dispatchEvent(new Event("change"));
          }
        } }),
      cell: (j) => h("input", { type: "checkbox", class: "select-row", value: j.id,
        "aria-label": `select job ${j.id}`, checked: selected.has(j.id),
        onchange: (e) => (e.target.checked ? selected.add(j.id) : selected.delete(j.id)) }),
    });
  }
  columns.push(
    { label: "job", cell: (j) => h("a", { href: link(["job", j.id]) }, h("code", {}, j.id)) },
    { label: "type", cell: (j) => j.type },
    { label: "queue", narrow: true, cell: (j) => h("a", { href: link(["queue", j.queue]) }, j.queue) },
    { label: "state", cell: (j) => badge(j.state) },
    { label: "attempt", num: true, narrow: true, cell: (j) => `${j.attempt ?? 0}/${j.max_attempts ?? "?"}` },
    { label: "error", narrow: true, cell: (j) => (j.error ? (j.error.message || j.error.code || "").slice(0, 80) : "") },
    { label: "when", cell: (j) => ago(j.completed_at || j.discarded_at || j.cancelled_at
      || j.started_at || j.scheduled_at || j.enqueued_at || j.created_at) },
  );
  return table(columns, jobs, { caption, empty });
}
