// Job: its envelope, state history with times, every error with its attempt, result and
// progress, followed live; retry, cancel (a running job too), enqueue a copy with edited args.

import { ADMIN, V1, adminAct, adminOr, call, get, post, qs, rows } from "./api.js";
import { OPEN_STATES, act, badge, fmtTime, h, json, link } from "./ui.js";

const TIME_FIELDS = ["created_at", "enqueued_at", "scheduled_at", "activated_at", "started_at",
  "next_attempt_at", "completed_at", "cancelled_at", "discarded_at", "expires_at"];

export async function render(main, { parts, ctx, live }) {
  const id = parts[1];
  const path = encodeURIComponent(id);
  const head = h("div", { class: "row", id: "job-head" });
  const actions = h("div", { class: "row", id: "job-actions" });
  const summary = h("div", { class: "grid" });
  const history = h("ol", { class: "timeline", id: "history" });
  const errors = h("div", { id: "errors" });
  const result = h("div", { id: "result" });
  const envelope = h("div", { id: "envelope" });
  const copyBox = h("div", { id: "copy" });
  main.replaceChildren(h("h1", {}, "Job ", h("code", {}, id)), head, actions, summary,
    h("section", { class: "card" }, h("h2", {}, "State history"), history),
    h("section", { class: "card" }, h("h2", {}, "Errors"), errors),
    h("section", { class: "card" }, h("h2", {}, "Result"), result),
    copyBox,
    h("section", { class: "card" }, h("h2", {}, "Envelope"), envelope));
  let job = null;

  async function refresh() {
    const { data } = await adminOr(`${ADMIN}/jobs/${path}`, () => get(`${V1}/jobs/${path}`));
    job = data.job || data;
    const events = await get(`${V1}/events${qs({ job_id: id, limit: 200 })}`).catch(() => ({ events: [] }));
    draw(rows(events, "events"));
  }

  function draw(events) {
    head.replaceChildren(h("span", { id: "job-state" }, badge(job.state)),
      h("span", {}, `type ${job.type}`), h("a", { href: link(["queue", job.queue]) }, `queue ${job.queue}`),
      h("span", {}, `attempt ${job.attempt ?? 0} of ${job.max_attempts ?? "?"}`),
      ...(job.dead_letter ? [badge("dead letter", "discarded")] : []));
    const p = job.progress;
    const pct = typeof p === "number" ? p : p?.progress ?? p?.percent;
    summary.replaceChildren(
      h("div", { class: "card" }, h("h2", {}, "Details"), h("dl", { class: "kv" },
        h("dt", {}, "priority"), h("dd", {}, job.priority ?? "—"),
        h("dt", {}, "worker"), h("dd", {}, job.worker_id || "—"),
        h("dt", {}, "timeout"), h("dd", {}, job.timeout_ms ? `${job.timeout_ms} ms` : "—"),
        h("dt", {}, "tags"), h("dd", {}, (job.tags || []).join(", ") || "—"))),
      h("div", { class: "card", id: "progress" }, h("h2", {}, "Progress"),
        p == null ? h("p", { class: "muted" }, "no progress reported")
          : [pct != null ? h("div", { class: "progress", role: "progressbar", "aria-valuenow": pct,
            "aria-valuemin": 0, "aria-valuemax": 100 }, h("div", { style: null, "data-pct": pct })) : null,
          json(p)]));
    const bar = summary.querySelector(".progress > div");
    if (bar) bar.style.width = `${Math.max(0, Math.min(100, Number(pct)))}%`;
    drawHistory(events);
    drawErrors();
    result.replaceChildren(job.result === undefined ? h("p", { class: "muted" }, "no result") : json(job.result));
    envelope.replaceChildren(json(job));
    drawActions();
  }

  function drawHistory(events) {
    const items = [];
    const meta = job.metadata || {};
    // A time the job carries is shown unless an event of the same step tells it already
    // (events say more: the attempt; times outlive the daemon's in-memory event log).
    const told = new Set(events.map((e) => e.type.replace(/^job\./, "")));
    for (const f of TIME_FIELDS) {
      const t = job[f] || meta[f];
      const step = f.replace(/_at$/, "");
      if (t && !told.has(step)) items.push({ at: t, text: step.replace("_", " "), kind: "time" });
    }
    for (const e of events) {
      const d = e.data || {};
      const extra = d.attempt ? ` (attempt ${d.attempt})` : "";
      items.push({ at: e.time || d.timestamp, text: `${e.type}${extra}`, kind: "event" });
    }
    items.sort((a, b) => new Date(a.at) - new Date(b.at));
    history.replaceChildren(...items.map((i) => h("li", { class: i.kind },
      h("time", { datetime: i.at }, fmtTime(i.at)), h("span", {}, i.text))));
    if (!items.length) history.append(h("li", { class: "muted" }, "no history kept"));
  }

  function drawErrors() {
    const list = Array.isArray(job.errors) && job.errors.length ? job.errors : job.error ? [job.error] : [];
    errors.replaceChildren(...(list.length ? list.map((e, i) => h("div", { class: "error-box" },
      h("strong", {}, `attempt ${e.attempt ?? i + 1}`), " ", h("code", {}, e.code || e.type || "error"),
      e.at || e.occurred_at ? h("span", { class: "muted" }, ` ${fmtTime(e.at || e.occurred_at)}`) : null,
      h("p", {}, e.message || ""), e.backtrace || e.details ? json(e.backtrace || e.details) : null))
      : [h("p", { class: "muted" }, "no errors")]));
  }

  function drawActions() {
    actions.replaceChildren();
    copyBox.replaceChildren();
    if (!ctx.canWrite) return;
    if (job.state === "discarded") { // the state machine lets nothing leave `cancelled`: copy it
      actions.append(h("button", { id: "retry", class: "primary", onclick: retry }, "Retry"));
    }
    if (OPEN_STATES.includes(job.state)) {
      actions.append(h("button", { id: "cancel", class: "danger", onclick: cancel },
        job.state === "active" ? "Cancel (running)" : "Cancel"));
    }
    const argsArea = h("textarea", { id: "copy-args", "aria-label": "arguments of the copy" },
      JSON.stringify(job.args ?? [], null, 2));
    copyBox.append(h("details", { class: "card" }, h("summary", {}, "Enqueue a copy with edited args"),
      h("label", { for: "copy-args" }, "args (JSON)"), argsArea,
      h("button", { id: "enqueue-copy", onclick: () => enqueueCopy(argsArea.value) }, "Enqueue copy")));
  }

  async function retry() {
    const done = await act("retried", () => adminAct(() => post(`${ADMIN}/jobs/${path}/retry`),
      () => post(`${V1}/dead-letter/${path}/retry`)));
    if (done) await refresh();
  }

  async function cancel() {
    const done = await act("cancel asked", () => adminAct(() => post(`${ADMIN}/jobs/${path}/cancel`),
      () => call("DELETE", `${V1}/jobs/${path}`)));
    if (done) await refresh();
  }

  async function enqueueCopy(text) {
    let args;
    try {
      args = JSON.parse(text);
    } catch (err) {
      await act("enqueue copy", () => { throw new Error(`args are not JSON: ${err.message}`); });
      return;
    }
    const body = { type: job.type, args, options: { queue: job.queue } };
    if (job.meta) body.meta = { ...job.meta, copied_from: job.id };
    if (job.priority != null) body.options.priority = job.priority;
    if (job.tags) body.options.tags = job.tags;
    const out = await act("enqueued a copy", () => post(`${V1}/jobs`, body));
    if (out?.job) location.hash = link(["job", out.job.id]);
  }

  await refresh();
  live.events(`${V1}/events/stream${qs({ job_id: id })}`, () => !live.stopped && refresh());
  live.every(3000, refresh);
}
