// Dead letters: filter by queue and type, select several, retry or delete them, or act on
// everything the filter matches; every bulk action asks first.

import { ADMIN, V1, adminAct, adminOr, del, get, post, qs, rows, total } from "./api.js";
import { jobsTable } from "./jobs-table.js";
import { act, confirmDialog, h, link, pager, toast } from "./ui.js";

const PER_PAGE = 25;

export async function render(main, { query, ctx, live }) {
  const queue = query.get("queue") || "";
  const type = query.get("type") || "";
  const page = Math.max(1, Number(query.get("page")) || 1);
  const selected = new Set();
  const queueInput = h("input", { id: "dl-queue", type: "search", value: queue, placeholder: "queue" });
  const typeInput = h("input", { id: "dl-type", type: "search", value: type, placeholder: "job type" });
  const bar = h("div", { class: "row", id: "dl-actions" });
  const list = h("div", { id: "dead-letters" });
  const stats = h("p", { class: "muted", id: "dl-stats" });
  main.replaceChildren(h("h1", {}, "Dead letters"), stats,
    h("form", { class: "row", onsubmit: (e) => {
      e.preventDefault();
      location.hash = link(["dead"], { queue: queueInput.value.trim(), type: typeInput.value.trim() });
    } }, h("label", { for: "dl-queue" }, "Queue"), queueInput, h("label", { for: "dl-type" }, "Type"),
    typeInput, h("button", { type: "submit" }, "Filter")), bar, list);

  async function load() {
    const { data, admin } = await adminOr(
      `${ADMIN}/dead-letter${qs({ queue, type, page, per_page: PER_PAGE })}`,
      () => get(`${V1}/dead-letter${qs({ queue, limit: PER_PAGE, offset: (page - 1) * PER_PAGE })}`));
    let items = rows(data, "jobs");
    if (!admin && type) items = items.filter((j) => j.type === type); // the old route has no type filter
    return { items, count: total(data, items.length), admin };
  }

  async function refresh() {
    const { items, count, admin } = await load();
    for (const id of [...selected]) if (!items.some((j) => j.id === id)) selected.delete(id);
    stats.textContent = `${count} dead letter${count === 1 ? "" : "s"}${queue || type ? " match" : " in all"}`;
    list.replaceChildren(jobsTable(items, { selected: ctx.canWrite ? selected : null,
      caption: "Dead letters", empty: "No dead letters." }),
    pager(count, page, PER_PAGE, (p) => { location.hash = link(["dead"], { queue, type, page: p }); }));
    drawBar(admin, count);
  }

  function drawBar(admin, count) {
    bar.replaceChildren();
    if (!ctx.canWrite) return;
    bar.append(
      h("button", { id: "retry-selected", class: "primary", onclick: () => onSelected("retry") }, "Retry selected"),
      h("button", { id: "delete-selected", class: "danger", onclick: () => onSelected("delete") }, "Delete selected"));
    if (admin && count) {
      bar.append(h("button", { id: "retry-matching", onclick: () => onMatching(count) },
        `Retry all ${count} matching`));
    }
  }

  async function onSelected(action) {
    const ids = [...selected];
    if (!ids.length) { toast("select dead letters first", "error"); return; }
    const ok = await confirmDialog(`${action === "retry" ? "Retry" : "Delete"} ${ids.length} dead letter${
      ids.length === 1 ? "" : "s"}?${action === "delete" ? " This cannot be undone." : ""}`,
    { ok: action === "retry" ? "Retry" : "Delete" });
    if (!ok) return;
    let failed = 0;
    for (const id of ids) {
      const path = encodeURIComponent(id);
      try {
        if (action === "retry") {
          await adminAct(() => post(`${ADMIN}/dead-letter/${path}/retry`), () => post(`${V1}/dead-letter/${path}/retry`));
        } else {
          await adminAct(() => del(`${ADMIN}/dead-letter/${path}`), () => del(`${V1}/dead-letter/${path}`));
        }
        selected.delete(id);
      } catch (err) {
        failed += 1;
        toast(`${action} ${id}: ${err.message}`, "error");
      }
    }
    toast(`${action === "retry" ? "retried" : "deleted"} ${ids.length - failed} of ${ids.length}`);
    await refresh();
  }

  async function onMatching(count) {
    const ok = await confirmDialog(`Retry every dead letter that matches (${count})?`, { ok: "Retry all" });
    if (!ok) return;
    const filter = {};
    if (queue) filter.queue = queue;
    if (type) filter.type = type;
    const out = await act("bulk retry", () => post(`${ADMIN}/dead-letter/retry`, { filter, confirm: true }));
    if (out) await refresh();
  }

  await refresh();
  live.every(5000, refresh);
}
