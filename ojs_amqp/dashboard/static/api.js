// Calls to the daemon's own API (same origin; the session cookie goes along by itself).

export const V1 = "/ojs/v1";
export const ADMIN = "/ojs/v1/admin";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function call(method, path, body) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
  };
  if (body !== undefined) init.body = JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `the daemon did not answer (${err.message})`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) {
    const e = (data && data.error) || {};
    if (res.status === 401) window.dispatchEvent(new CustomEvent("ojs-unauthenticated"));
    throw new ApiError(res.status, e.code || `http_${res.status}`, e.message || res.statusText);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const del = (path, body) => call("DELETE", path, body);

export function qs(params) {
  const out = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") out.set(k, String(v));
  }
  const s = out.toString();
  return s ? `?${s}` : "";
}

// A list answer's rows, whichever key the endpoint uses (`items` in the admin API).
export function rows(data, ...keys) {
  if (Array.isArray(data)) return data;
  for (const k of ["items", ...keys]) if (data && Array.isArray(data[k])) return data[k];
  return [];
}

export function total(data, fallback) {
  return data?.pagination?.total ?? data?.total ?? fallback;
}

// Which optional parts of the API this daemon serves, from its manifest (set at start), so the
// page never calls a route that is not there.
export const served = { admin: false, deadLetterAdmin: false };

export function learn(manifest) {
  const ext = manifest?.extensions || {};
  const names = [...(ext.official || []), ...(ext.experimental || [])].map((e) => e.name || e);
  served.admin = names.includes("admin-api");
  served.deadLetterAdmin = served.admin && names.includes("dead-letter");
}

// The admin API's answer, or the fallback's where this daemon does not serve the admin API.
export async function adminOr(adminPath, fallback) {
  if (served.admin || !fallback) return { data: await get(adminPath), admin: true };
  return { data: await fallback(), admin: false };
}

// An admin API change, or the fallback where this daemon does not serve the admin API.
export function adminAct(fn, fallback) {
  return served.admin || !fallback ? fn() : fallback();
}

// Prometheus text from /metrics, as [{name, labels, value}].
export async function metrics() {
  const res = await fetch("/metrics", { credentials: "same-origin" });
  if (!res.ok) throw new ApiError(res.status, `http_${res.status}`, "GET /metrics failed");
  const out = [];
  const labelRe = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const line of (await res.text()).split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(labelRe)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}
