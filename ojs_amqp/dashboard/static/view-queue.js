// Queue: its jobs by state (paged, filtered by type), purge with a confirmation, and
// pause/resume where the daemon offers it (the manifest's pause_resume capability).

import { ADMIN, del, get, post, qs, rows, served, total } from "./api.js";
import { queuesWithCounts } from "./data.js";
import { jobsTable } from "./jobs-table.js";
import { STATES, act, badge, confirmDialog, h, link, needsAdmin, pager } from "./ui.js";

const PER_PAGE = 25;
const PURGEABLE = ["completed", "discarded", "cancelled", "available", "scheduled", "retryable"];

export async function render(main, { parts, query, ctx, live }) {
  const name = parts[1];
  const state = query.get("state") || "";
  const type = query.get("type") || "";
  const page = Math.max(1, Number(query.get("page")) || 1);
  const go = (changes) => {
    location.hash = link(["queue", name], { state, type, page, ...changes });
  };
  const head = h("div", { class: "row" });
  const tabs = h("nav", { class: "tabs", "aria-label": "States" });
  const list = h("div", { id: "jobs" });
  const typeInput = h("input", { type: "search", id: "type-filter", value: type, placeholder: "job type" });
  main.replaceChildren(
    h("h1", {}, `Queue ${name}`), head, tabs,
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); go({ type: typeInput.value.trim(), page: 1 }); } },
      h("label", { for: "type-filter" }, "Type"), typeInput, h("button", { type: "submit" }, "Filter")),
    list);

  async function refresh() {
    if (!served.admin) {
      const { queues } = await queuesWithCounts();
      drawCounts((queues.find((q) => q.name === name) || {}).counts || {});
      list.replaceChildren(needsAdmin("The list of a queue's jobs"));
      return;
    }
    const [detail, jobs] = await Promise.all([
      get(`${ADMIN}/queues/${encodeURIComponent(name)}`),
      get(`${ADMIN}/jobs${qs({ queue: name, state, type, page, per_page: PER_PAGE })}`),
    ]);
    const info = detail.queue || detail;
    const counts = info.counts || info.jobs || {};
    const paused = info.paused ?? info.state === "paused";
    head.replaceChildren(paused ? badge("paused") : badge("active", "ok"), ...controls(paused));
    drawCounts(counts);
    const items = rows(jobs, "jobs");
    list.replaceChildren(jobsTable(items, { caption: `Jobs of ${name}`, empty: "No jobs match." }),
      pager(total(jobs, items.length), page, PER_PAGE, (p) => go({ page: p })));
  }

  function drawCounts(counts) {
    tabs.replaceChildren(
      h("a", { href: link(["queue", name], { type }), "aria-current": state === "" ? "true" : "false" }, "all"),
      ...STATES.map((s) => h("a", { href: link(["queue", name], { state: s, type }),
        "aria-current": s === state ? "true" : "false" }, `${s} ${counts[s] ?? 0}`)));
  }

  function controls(paused) {
    if (!ctx.canWrite) return [];
    const out = [];
    if (ctx.manifest?.capabilities?.pause_resume) {
      out.push(h("button", { id: paused ? "resume" : "pause", onclick: () =>
        act(paused ? `resumed ${name}` : `paused ${name}`,
          () => post(`${ADMIN}/queues/${encodeURIComponent(name)}/${paused ? "resume" : "pause"}`))
          .then(refresh) }, paused ? "Resume" : "Pause"));
    }
    out.push(h("button", { id: "purge", class: "danger", onclick: purge }, "Purge…"));
    return out;
  }

  async function purge() {
    const boxes = PURGEABLE.map((s) => h("label", {}, h("input", { type: "checkbox", name: "purge-state",
      value: s, checked: ["completed", "discarded", "cancelled"].includes(s) }), ` ${s} `));
    const ok = await confirmDialog(`Delete the jobs of queue ${name} in these states? This cannot be undone.`,
      { ok: "Purge", extra: h("div", {}, boxes) });
    if (!ok) return;
    const states = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    const out = await act(`purged ${name}`,
      () => del(`${ADMIN}/queues/${encodeURIComponent(name)}/jobs`, { states, confirm: true }));
    if (out) await refresh();
  }

  await refresh();
  live.every(5000, refresh);
}
