// crispflow page actions: each form.cf-action triggers a DAG run through Airflow's REST API with the user's own
// cookie (credentials: "same-origin"), so Airflow checks the permission, audits the call and records who triggered
// it. The conf the page showed (data-conf) plus the form's fields is sent; the result is shown in the form.
"use strict";

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form.cf-action");
  if (!form) return;
  event.preventDefault();
  const button = form.querySelector("button");
  const out = form.querySelector("output");
  const conf = JSON.parse(form.dataset.conf || "{}");
  for (const field of form.querySelectorAll("input[name], textarea[name]")) {
    if (field.value !== "") conf[field.name] = field.value;
  }
  const show = (text, ok, href) => {
    out.textContent = "";
    out.className = ok ? "ok" : "bad";
    out.append(document.createTextNode(text));
    if (href) {
      const link = document.createElement("a");
      link.href = href;
      link.textContent = " open the run";
      out.append(link);
    }
  };
  button.disabled = true;
  try {
    const response = await fetch(`${form.dataset.api}/dags/${encodeURIComponent(form.dataset.dag)}/dagRuns`, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({logical_date: null, conf: conf, note: form.dataset.note || null}),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      const run = body.dag_run_id || "";
      show(`Triggered ${form.dataset.dag}: ${run}.`, true,
           `${form.dataset.ui}/dags/${encodeURIComponent(form.dataset.dag)}/runs/${encodeURIComponent(run)}`);
    } else {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      show(`Refused (${response.status}): ${detail}`, false);
      button.disabled = false;
    }
  } catch (error) {
    show(`The request failed: ${error}`, false);
    button.disabled = false;
  }
});
