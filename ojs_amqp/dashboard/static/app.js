// The dashboard shell: who is logged in, the hash router, and each view's lifetime.

import { ApiError, call, get, learn } from "./api.js";
import { currentRoute, h, link, problem, toast } from "./ui.js";
import * as cron from "./view-cron.js";
import * as dead from "./view-dead.js";
import * as job from "./view-job.js";
import * as overview from "./view-overview.js";
import * as queue from "./view-queue.js";
import * as search from "./view-search.js";
import * as timings from "./view-timings.js";
import * as workers from "./view-workers.js";

const VIEWS = { "": overview, queue, job, search, dead, workers, cron, timings };
const main = document.getElementById("main");
const ctx = { identity: null, manifest: null, canWrite: false };
let cleanup = null;

async function identify() {
  const identity = await get("/ojs/admin/session");
  if (!identity.authenticated) return false;
  ctx.identity = identity;
  ctx.canWrite = Boolean(ctx.identity.can_write);
  ctx.manifest = await get("/ojs/manifest");
  learn(ctx.manifest);
  document.body.classList.toggle("read-only", !ctx.canWrite);
  renderIdentity();
  return true;
}

function renderIdentity() {
  const el = document.getElementById("identity");
  const id = ctx.identity;
  const parts = [id.login_required ? `${id.scope} session` : "no login needed on loopback"];
  if (!ctx.canWrite) parts.push("read-only");
  el.replaceChildren(parts.join(" · "));
  if (id.login_required) {
    el.append(" ", h("button", { type: "button", id: "logout", onclick: logout }, "Log out"));
  }
}

async function logout() {
  await call("DELETE", "/ojs/admin/session").catch(() => null);
  location.reload();
}

function showLogin(message) {
  stop();
  document.getElementById("identity").replaceChildren();
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password",
    required: true, "aria-describedby": "login-help" });
  const status = h("p", { role: "alert", class: "muted" }, message || "");
  const form = h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await call("POST", "/ojs/admin/session", { token: input.value });
      await start();
    } catch (err) {
      status.textContent = err.message;
      input.select();
    }
  } },
  h("h1", {}, "Log in"),
  h("label", { for: "token" }, "Admin token"),
  input,
  h("p", { id: "login-help", class: "muted" },
    "The token is exchanged for a session cookie; the page never keeps it."),
  h("button", { type: "submit", class: "primary" }, "Log in"),
  status);
  main.replaceChildren(form);
  input.focus();
}

function stop() {
  if (cleanup) cleanup();
  cleanup = null;
}

async function route() {
  stop();
  const { parts, query } = currentRoute();
  const view = VIEWS[parts[0] || ""];
  for (const a of document.querySelectorAll("header nav a")) {
    const target = a.getAttribute("href").replace(/^#\/?/, "");
    a.toggleAttribute("aria-current", target === (parts[0] || ""));
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  if (!view) {
    main.replaceChildren(problem(new Error(`no such view: ${parts[0]}`)));
    return;
  }
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  performance.mark("ojs-route-start");
  const timers = [];
  const sources = [];
  let stopped = false;
  cleanup = () => {
    stopped = true;
    timers.forEach(clearInterval);
    sources.forEach((s) => s.close());
  };
  const live = {
    every(ms, fn) {
      if (!stopped) timers.push(setInterval(() => stopped || fn().catch(report), ms));
    },
    events(path, fn) {
      if (stopped) return;
      const source = new EventSource(path);
      source.onmessage = fn;
      for (const t of ["job.enqueued", "job.started", "job.completed", "job.failed",
        "job.retrying", "job.discarded", "job.cancelled", "job.scheduled", "job.expired"]) {
        source.addEventListener(t, fn);
      }
      sources.push(source);
    },
    get stopped() { return stopped; },
  };
  try {
    const extra = await view.render(main, { parts, query, ctx, live });
    // How long the view took to show its data (the browser tests time it).
    performance.measure("ojs-view", { start: "ojs-route-start", detail: parts[0] || "overview" });
    if (typeof extra === "function") {
      if (stopped) extra();
      else sources.push({ close: extra });
    }
  } catch (err) {
    if (!stopped) main.replaceChildren(problem(err));
  }
}

// A failed refresh keeps the last view and says why (a console error would hide nothing).
function report(err) {
  if (!(err instanceof ApiError && err.status === 401)) toast(`refresh failed: ${err.message}`, "error");
}

async function start() {
  if (!(await identify())) {
    showLogin();
    return;
  }
  await route();
}

window.addEventListener("hashchange", () => ctx.identity && route());
window.addEventListener("ojs-unauthenticated", () => {
  if (ctx.identity) {
    ctx.identity = null;
    showLogin("Your session has ended; log in again.");
  }
});
document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = document.getElementById("search-q").value.trim();
  if (q) location.hash = link(["search"], { q });
});
start().catch((err) => main.replaceChildren(problem(err)));
