// Shoal dashboard: a little plain JavaScript. Reads are server-rendered; actions call the JSON
// API with the token kept in this browser's localStorage. Text from the server is set with
// textContent, never innerHTML.
"use strict";

const TOKEN_KEY = "shoal-token";

function flash(message, isError) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = isError ? "error" : "";
  el.style.display = "block";
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.style.display = "none"; }, 5000);
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const why = data && data.error ? data.error : res.statusText;
    flash(res.status + ": " + why, true);
    throw new Error(why);
  }
  return data;
}

function setupAuth() {
  const input = document.getElementById("token");
  const state = document.getElementById("token-state");
  const save = document.getElementById("token-save");
  const refresh = () => {
    const have = !!localStorage.getItem(TOKEN_KEY);
    state.textContent = have ? "token set" : "no token";
    save.textContent = have ? "Forget token" : "Use token";
    input.style.display = have ? "none" : "";
  };
  save.addEventListener("click", () => {
    if (localStorage.getItem(TOKEN_KEY)) {
      localStorage.removeItem(TOKEN_KEY);
    } else if (input.value.trim()) {
      localStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
    }
    refresh();
  });
  refresh();
}

function setupSaveView() {
  const form = document.getElementById("save-view");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = form.elements["name"].value.trim();
    if (!name) { flash("Name the view first", true); return; }
    const params = new URLSearchParams(location.search);
    const filters = {};
    for (const k of ["status", "commit", "from", "to", "q"]) {
      const v = params.get(k);
      if (v) filters[k] = v;
    }
    await api("POST", form.dataset.api, { name, filters });
    location.reload();
  });
  for (const btn of document.querySelectorAll("[data-delete-view]")) {
    btn.addEventListener("click", async () => {
      await api("DELETE", btn.dataset.deleteView);
      location.reload();
    });
  }
}

function setupActions() {
  for (const btn of document.querySelectorAll("[data-action]")) {
    btn.addEventListener("click", async () => {
      if (btn.dataset.confirm && !confirm(btn.dataset.confirm)) return;
      const body = btn.dataset.body ? JSON.parse(btn.dataset.body) : undefined;
      btn.disabled = true;
      try {
        await api(btn.dataset.method || "POST", btn.dataset.action, body);
        flash("Done");
        setTimeout(() => location.reload(), 400);
      } finally { btn.disabled = false; }
    });
  }
  for (const form of document.querySelectorAll("form[data-pin]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const v = form.elements["sequence"].value;
      await api("PUT", form.dataset.pin, { sequence: v === "" ? null : Number(v) });
      location.reload();
    });
  }
  const policy = document.getElementById("policy");
  if (policy) {
    policy.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let plan;
      try { plan = JSON.parse(policy.elements["plan"].value); }
      catch (e) { flash("The plan is not JSON: " + e.message, true); return; }
      await api("PUT", policy.dataset.api, { plan });
      location.reload();
    });
  }
}

async function followLog() {
  const pre = document.getElementById("log");
  if (!pre || pre.dataset.live !== "true") return;
  const res = await fetch(pre.dataset.src);
  if (!res.ok || !res.body) return;
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  pre.textContent = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pre.textContent += decoder.decode(value, { stream: true });
    pre.scrollTop = pre.scrollHeight;
  }
  setTimeout(() => location.reload(), 800);
}

document.addEventListener("DOMContentLoaded", () => {
  setupAuth();
  setupSaveView();
  setupActions();
  followLog();
});
