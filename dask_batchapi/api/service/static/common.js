// Shared by the dashboard's pages. Every value from the service is drawn with textContent
// (never innerHTML): payloads, errors and log lines are user data.
"use strict";

const POLL_MS = 500; // the pages are at most about a second behind the store

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

async function send(method, url) {
  // the header proves the request comes from this page (see auth.py: cookie + header)
  const response = await fetch(url, {
    method, credentials: "same-origin", headers: { "X-BatchAPI-Request": "1" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return seconds.toFixed(1) + "s";
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
}

function rate(row) {
  return row.rate === null || row.rate === undefined ? "–" : row.rate.toFixed(1) + "/s";
}

function statusText(row) {
  return row.interrupted ? row.status + " (interrupted)" : row.status;
}

function statusCell(row) {
  const name = row.interrupted ? "interrupted" : row.status;
  return el("span", statusText(row), "status status-" + String(name).replace(/[^a-z_]/g, ""));
}

function progressText(row) {
  const total = row.total === null ? "?" : row.total;
  return row.done + "/" + total + (row.percent === null ? "" : " (" + row.percent + "%)");
}

function progressBar(row) {
  const outer = el("div", null, "progress");
  const bar = el("div", null, "bar");
  bar.style.width = (row.percent || 0) + "%";
  outer.appendChild(bar);
  return outer;
}

function workersText(row) {
  const held = row.workers_held === null || row.workers_held === undefined ? "?" : row.workers_held;
  return held + "/" + row.workers_asked;
}

function setProblem(error) {
  document.getElementById("problem").textContent = error ? "update failed: " + error.message : "";
}

function stamp() {
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function poll(fn) {
  const tick = async () => {
    try { await fn(); setProblem(null); stamp(); } catch (error) { setProblem(error); }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

function safeLink(url) {
  // only http(s) links: a javascript: URL from the store must never become clickable
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch (e) { return null; }
}
