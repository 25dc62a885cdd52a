// The jobs list: every API and its newest jobs, polled from /_/overview.
"use strict";

const COLUMNS = ["job id", "status", "progress", "rate", "ETA", "workers held/asked",
  "queue", "failed attempts", "dead lettered", "started"];

function jobLink(row) {
  const a = el("a", row.job_id);
  a.href = "/_/job?" + new URLSearchParams({ api: row.api_name, job: row.job_id });
  return a;
}

function jobRow(row) {
  const tr = el("tr");
  tr.dataset.jobId = row.job_id;
  const progress = el("span");
  progress.append(progressBar(row), " ", progressText(row));
  const cells = [jobLink(row), statusCell(row), progress, rate(row),
    row.terminal ? "–" : duration(row.eta), workersText(row),
    row.queue_position === null || row.queue_position === undefined ? "–" : "#" + row.queue_position,
    row.failed_attempts, row.dead_lettered, row.start_time || row.created_time || "–"];
  for (const value of cells) {
    const td = el("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = String(value);
    tr.appendChild(td);
  }
  return tr;
}

function apiSection(api) {
  const section = el("section", null, "api");
  section.dataset.api = api.name;
  section.appendChild(el("h2", api.name));
  if (!api.jobs.length) { section.appendChild(el("p", "no jobs yet", "muted")); return section; }
  const table = el("table", null, "jobs");
  const head = el("tr");
  for (const c of COLUMNS) head.appendChild(el("th", c));
  table.appendChild(head);
  for (const row of api.jobs) table.appendChild(jobRow(row));
  section.appendChild(table);
  return section;
}

async function refresh() {
  const data = await getJSON("/_/overview");
  const main = document.getElementById("apis");
  const sections = data.apis.map(apiSection);
  if (!sections.length) sections.push(el("p", "no APIs are deployed (dask-batchapi deploy PROJECT_DIR)", "muted"));
  main.replaceChildren(...sections);
}

poll(refresh);
