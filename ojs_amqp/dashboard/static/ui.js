// Small DOM helpers: every value from the API goes in as text, never as HTML.

export const STATES = [
  "available", "pending", "scheduled", "active", "retryable", "completed", "discarded", "cancelled",
];
export const OPEN_STATES = ["available", "pending", "scheduled", "active", "retryable"];

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}` }, text);
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function ago(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (Number.isNaN(s)) return String(iso);
  const abs = Math.abs(s);
  const text = abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min`
    : abs < 86400 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return `${(s / 60).toFixed(1)} min`;
}

export function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

export function table(columns, items, { caption, empty = "Nothing here." } = {}) {
  if (!items.length) return h("p", { class: "muted" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", { class: "sr" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) =>
        h("th", { class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" "), scope: "col" },
          c.label)))),
      h("tbody", {}, items.map((item) => h("tr", {}, columns.map((c) =>
        h("td", { class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" ") },
          c.cell(item))))))));
}

export function pager(totalCount, page, perPage, go) {
  const pages = Math.max(1, Math.ceil(totalCount / perPage));
  return h("nav", { class: "pager", "aria-label": "Pages" },
    h("button", { disabled: page <= 1, onclick: () => go(page - 1) }, "‹ Previous"),
    h("span", {}, `page ${page} of ${pages} (${totalCount} in all)`),
    h("button", { disabled: page >= pages, onclick: () => go(page + 1) }, "Next ›"));
}

export function toast(message, kind = "info") {
  const el = h("div", { class: `toast ${kind}` }, message);
  document.getElementById("toasts").append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

// A modal question; resolves true when confirmed. `extra` is shown under the text.
export function confirmDialog(text, { ok = "Confirm", extra = null } = {}) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  document.getElementById("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// Runs an action, reporting its outcome; errors are shown, never thrown at the page.
export async function act(label, fn) {
  try {
    const out = await fn();
    toast(label);
    return out;
  } catch (err) {
    toast(`${label} failed: ${err.message}`, "error");
    return undefined;
  }
}

export function problem(err) {
  return h("div", { class: "card error-box", role: "alert" }, String(err.message || err));
}

// Hash routes: "#/queue/email?state=active" -> {parts: ["queue", "email"], query}
export function currentRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return {
    parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    query: new URLSearchParams(query),
  };
}

export function link(parts, query = {}) {
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v != null));
  const s = q.toString();
  return `#/${parts.map(encodeURIComponent).join("/")}${s ? `?${s}` : ""}`;
}

// What a view shows in place of what needs the admin API, on a daemon that does not serve it.
export function needsAdmin(what) {
  return h("div", { class: "card error-box", role: "note" },
    `${what} needs the OJS admin API (GET /ojs/v1/admin/...), which this daemon does not serve `
    + "(its manifest lists no admin-api extension).");
}
