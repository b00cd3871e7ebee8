// Search: a job id opens the job; any other text finds jobs whose args or meta contain it
// (GET /ojs/v1/admin/search, served with the dashboard: ojs_amqp/dashboard/search.py).

import { ADMIN, V1, ApiError, get, qs, rows } from "./api.js";
import { jobsTable } from "./jobs-table.js";
import { h, link } from "./ui.js";

const PER_PAGE = 25;
// Job ids are UUIDs (v7 from this daemon); only such text is looked up as an id.
const JOB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export async function render(main, { query }) {
  const q = (query.get("q") || "").trim();
  const field = query.get("in") || "args";
  const input = h("input", { id: "search-text", type: "search", value: q, required: true });
  const select = h("select", { id: "search-in", "aria-label": "search in" },
    ["args", "meta"].map((f) => h("option", { value: f, selected: f === field }, f)));
  const out = h("div", { id: "results" });
  main.replaceChildren(h("h1", {}, "Search"),
    h("form", { class: "row", onsubmit: (e) => {
      e.preventDefault();
      location.hash = link(["search"], { q: input.value.trim(), in: select.value });
    } }, h("label", { for: "search-text" }, "Job id or text"), input, select,
    h("button", { type: "submit", class: "primary" }, "Search")), out);
  if (!q) return;
  if (JOB_ID.test(q)) {
    try {
      const found = await get(`${V1}/jobs/${encodeURIComponent(q)}`);
      out.append(h("section", { class: "card", id: "by-id" }, h("h2", {}, "Job with this id"),
        jobsTable([found.job])));
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
      out.append(h("p", { class: "muted", id: "by-id" }, "No job has this id."));
    }
    return;
  }
  const answer = await get(`${ADMIN}/search${qs({ q, in: field, per_page: PER_PAGE })}`);
  const items = rows(answer);
  out.append(h("section", { class: "card", id: "by-content" },
    h("h2", {}, `Jobs whose ${field} contain “${q}”`),
    h("p", { class: "muted" }, `Newest first, among the ${answer.searched?.newest ?? "?"} newest jobs; `
      + `at most ${PER_PAGE} shown.`),
    jobsTable(items, { empty: "No job matches." })));
}
