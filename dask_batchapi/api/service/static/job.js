// One job: its progress, batch metrics, worker counts, logs (followed while it runs) and dead
// letter, with Stop and Retry. ?api=<name>&job=<id>
"use strict";

const params = new URLSearchParams(window.location.search);
const API = params.get("api") || "", JOB = params.get("job") || "";
const base = "/_/jobs/" + encodeURIComponent(API) + "/" + encodeURIComponent(JOB);
let logCursor = null, deadShown = -1;

function fillTable(id, pairs) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...pairs.map(([k, v]) => {
    const tr = el("tr"); tr.append(el("th", k), el("td", v === null || v === undefined ? "–" : v)); return tr;
  }));
}

function drawJob(data) {
  const row = data.row, job = data.status.job_status;
  document.getElementById("title").textContent = API + " / " + JOB;
  document.title = API + "/" + JOB + ": " + statusText(row);
  const bar = document.getElementById("bar");
  bar.style.width = (row.percent || 0) + "%";
  bar.setAttribute("aria-valuenow", row.percent === null ? 0 : row.percent);
  const status = document.getElementById("status");
  status.textContent = statusText(row);
  status.className = "status status-" + (row.interrupted ? "interrupted" : row.status);
  document.getElementById("counts").textContent = progressText(row) + " batches · " + rate(row)
    + (row.terminal ? "" : " · ETA " + duration(row.eta)) + " · elapsed " + duration(row.elapsed);
  document.getElementById("error").textContent = row.error || "";
  document.getElementById("resume").textContent = row.resume_command ? "resume: " + row.resume_command : "";
  document.getElementById("stop").disabled = row.terminal;
  document.getElementById("retry").disabled = !(row.terminal && row.dead_lettered > 0);
  const m = job.batch_metrics || {};
  fillTable("metrics", [["total", job.total_batch_count], ["succeeded", m.succeeded],
    ["failed attempts", m.failed], ["dead lettered", m.dead_lettered], ["lost with a worker", m.lost],
    ["in queue", job.batches_in_queue],
    ["average time per batch", m.average_time_per_batch === null || m.average_time_per_batch === undefined
      ? null : (m.average_time_per_batch * 1000).toFixed(1) + " ms"]]);
  const counts = Object.entries(job.worker_counts || {});
  fillTable("workers", [["asked (workers)", job.workers], ["held", row.workers_held],
    ["queue position", row.queue_position], ...counts]);
  const link = document.getElementById("dask-dashboard");
  const href = row.dashboard_link ? safeLink(row.dashboard_link) : null;
  link.hidden = !href;
  if (href) link.href = href;
  return row;
}

function logText(line) {
  try {
    const r = JSON.parse(line);
    if (r && typeof r === "object") {
      const where = r.batch_id !== undefined ? " [batch " + r.batch_id + "]" : "";
      return (r.asctime || "") + " " + (r.levelname || "") + where + " " + (r.message ?? "");
    }
  } catch (e) { /* not JSON: show as it is */ }
  return line;
}

async function drawLogs(row) {
  const query = logCursor === null ? "" : "?" + new URLSearchParams({ after: logCursor });
  const data = await getJSON(base + "/logs" + query);
  const pre = document.getElementById("logs");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 5;
  for (const line of data.lines) pre.appendChild(document.createTextNode(logText(line) + "\n"));
  if (data.after !== null) logCursor = data.after;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
  document.getElementById("following").textContent = row.terminal ? "" : "(following)";
}

function deadRecord(r) {
  const box = el("div", null, "dead");
  box.append(el("h3", "batch " + r.batch_id + " · " + r.attempts + " attempts"
    + (r.item_index !== undefined ? " · item " + r.item_index : "")));
  box.append(el("div", "error", "muted"), el("pre", r.error, "error"));
  box.append(el("div", "payload", "muted"), el("pre", JSON.stringify(r.payload, null, 2)));
  box.append(el("div", "traceback", "muted"), el("pre", r.traceback || ""));
  return box;
}

async function drawDeadLetter(row) {
  if (row.dead_lettered === deadShown) return;
  const data = await getJSON(base + "/dead-letter");
  deadShown = row.dead_lettered;
  const records = data.records;
  document.getElementById("dead-count").textContent = "(" + data.total
    + (data.total > records.length ? ", the first " + records.length + " shown" : "") + ")";
  const box = document.getElementById("dead-letter");
  box.replaceChildren(...(records.length ? records.map(deadRecord) : [el("p", "no failed batches", "muted")]));
}

async function refresh() {
  const row = drawJob(await getJSON(base));
  await drawLogs(row);
  await drawDeadLetter(row);
}

async function act(label, fn) {
  const out = document.getElementById("action");
  try { out.textContent = label + "…"; out.textContent = await fn(); }
  catch (error) { out.textContent = label + " failed: " + error.message; }
}

document.getElementById("stop").addEventListener("click", () => act("stopping", async () => {
  const body = await send("DELETE", "/" + encodeURIComponent(API) + "?" + new URLSearchParams({ jobID: JOB }));
  return body.message;
}));

document.getElementById("retry").addEventListener("click", () => act("retrying", async () => {
  const job = await send("POST", base + "/retry");
  window.location.href = "/_/job?" + new URLSearchParams({ api: API, job: job.job_id });
  return "started job " + job.job_id;
}));

poll(refresh);
