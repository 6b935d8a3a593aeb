// The falgate playground: renders a form from the endpoint's input schema and runs it with the
// real @fal-ai/client (bundled and served by falgate) through /api/fal/proxy.
//
// The token comes from the URL fragment (#token=..., never sent to a server) or from the token
// form, and is kept in sessionStorage for this tab only.
//
// Test hook: ?autorun=1 submits at once; <field>=value sets a field (e.g. input_concept=...);
// mode=events|polling|streaming picks how the run learns it ended (events, the default: the
// caller's event stream GET /api/fal/events); endpoint=<id> picks the endpoint;
// request_id=<id> opens a request.
// The latest status text is in #status (its data-source says what told it), the final output
// JSON in #result; "Open a request" lists the caller's requests (GET /api/fal/requests) in
// #requests.

import { createFalClient, ApiError, ValidationError } from "/playground/fal-client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TOKEN_KEY = "falgate.playground.token";

const state = { token: null, endpoints: [], fields: [], run: null, events: null };

/** In events mode, how often the page asks for a status meanwhile: only a backstop (and what
 * shows a running job's progress) until falgate learns the end by itself (fal's webhook). */
const EVENTS_BACKSTOP_MS = 2000;

function readToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    return fromHash;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function setStatus(text, source = "page") {
  $("status").textContent = text;
  $("status").dataset.source = source;
}

function showError(text) {
  $("error").textContent = text;
}

function authorized(headers = {}) {
  return { ...headers, authorization: `Bearer ${state.token}` };
}

function client() {
  return createFalClient({
    proxyUrl: { url: `${location.origin}/api/fal/proxy`, when: "always" },
    requestMiddleware: async (request) => ({ ...request, headers: authorized(request.headers) }),
  });
}

/** The message of an error falgate or fal answered, with its status and code. */
function describe(error) {
  if (error instanceof ApiError) {
    const body = error.body || {};
    const code = body.code || (body.error && body.error.code) || "";
    const message = body.message || (typeof body.detail === "string" ? body.detail : "") || error.message;
    return `${error.status}${code ? ` ${code}` : ""}: ${message}`;
  }
  return String((error && error.message) || error);
}

// ---- endpoints and the form --------------------------------------------------------------

async function loadEndpoints() {
  const answer = await fetch("/playground/api/endpoints", { headers: authorized() });
  if (answer.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error("falgate refused the token (401): paste a valid one");
  }
  if (!answer.ok) throw new Error(`cannot list endpoints: HTTP ${answer.status}`);
  const body = await answer.json();
  $("who").textContent = `${body.subject} (tier ${body.tier})`;
  state.endpoints = body.endpoints;
  const select = $("endpoint");
  select.replaceChildren(
    ...body.endpoints.map((e) => {
      const option = document.createElement("option");
      option.value = e.id;
      option.textContent = e.id;
      return option;
    }),
  );
  if (params.get("endpoint")) select.value = params.get("endpoint");
  if (!body.endpoints.length) setStatus("your token may use no endpoint");
}

function currentEndpoint() {
  return state.endpoints.find((e) => e.id === $("endpoint").value);
}

/** The branch of a `type: [x, "null"]` / anyOf / oneOf schema to render. */
function concrete(schema) {
  const branches = schema.anyOf || schema.oneOf;
  if (branches) {
    const branch = branches.find((b) => b.type !== "null") || branches[0];
    return { ...branch, title: schema.title, description: schema.description, default: schema.default, nullable: true };
  }
  if (Array.isArray(schema.type)) {
    const type = schema.type.find((t) => t !== "null");
    return { ...schema, type, nullable: schema.type.includes("null") };
  }
  return schema;
}

function fieldKind(schema) {
  if (Array.isArray(schema.enum)) return "enum";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "object" || schema.type === "array") return "json";
  return "string";
}

function renderForm() {
  const endpoint = currentEndpoint();
  const container = $("fields");
  container.replaceChildren();
  state.fields = [];
  if (!endpoint || !endpoint.schema) return;
  const schema = endpoint.schema;
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const order = schema["x-fal-order-properties"] || Object.keys(properties);
  for (const name of order) {
    if (!properties[name]) continue;
    const field = concrete(properties[name]);
    const kind = fieldKind(field);
    const id = `input-${name}`;
    const wrapper = document.createElement("div");
    wrapper.className = "field";
    wrapper.dataset.field = name;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = field.title || name;
    if (required.has(name)) {
      const mark = document.createElement("span");
      mark.className = "required-mark";
      mark.textContent = "*";
      mark.title = "required";
      label.append(mark);
    }
    let control;
    if (kind === "enum") {
      control = document.createElement("select");
      if (!required.has(name) && field.default === undefined) control.append(new Option("", ""));
      for (const value of field.enum) control.append(new Option(String(value), String(value)));
      if (field.default !== undefined) control.value = String(field.default);
    } else if (kind === "boolean") {
      control = document.createElement("input");
      control.type = "checkbox";
      control.checked = field.default === true;
    } else if (kind === "number") {
      control = document.createElement("input");
      control.type = "number";
      if (field.minimum !== undefined) control.min = field.minimum;
      if (field.maximum !== undefined) control.max = field.maximum;
      control.step = field.type === "integer" ? "1" : "any";
      if (field.default !== undefined) control.value = field.default;
    } else if (kind === "json") {
      control = document.createElement("textarea");
      if (field.default !== undefined) control.value = JSON.stringify(field.default);
      control.placeholder = "JSON";
    } else {
      const long = field.maxLength === undefined || field.maxLength > 200;
      control = document.createElement(long ? "textarea" : "input");
      if (!long) control.type = "text";
      if (field.maxLength !== undefined) control.maxLength = field.maxLength;
      if (field.default !== undefined && field.default !== null) control.value = field.default;
      if (Array.isArray(field.examples) && field.examples.length) control.placeholder = String(field.examples[0]);
    }
    control.id = id;
    control.name = name;
    if (required.has(name)) {
      control.required = true;
      control.setAttribute("aria-required", "true");
    }
    const error = document.createElement("span");
    error.className = "field-error";
    error.id = `error-${name}`;
    error.dataset.errorFor = name;
    control.setAttribute("aria-describedby", error.id);
    wrapper.append(label, control);
    if (field.description) {
      const description = document.createElement("p");
      description.className = "description";
      description.textContent = field.description;
      wrapper.append(description);
    }
    wrapper.append(error);
    container.append(wrapper);
    state.fields.push({ name, kind, field, control, required: required.has(name), wrapper, error });
  }
  // Query parameters named like a field fill it (the test hook, and shareable links).
  for (const entry of state.fields) {
    if (!params.has(entry.name)) continue;
    const value = params.get(entry.name);
    if (entry.kind === "boolean") entry.control.checked = value === "true" || value === "1";
    else entry.control.value = value;
  }
}

/**
 * The input object. Empty fields are left out: fal's defaults apply to optional ones, and a
 * required one left empty comes back as a "field required" error beside it.
 */
function collectInput() {
  const input = {};
  for (const { name, kind, control } of state.fields) {
    if (kind === "boolean") {
      input[name] = control.checked;
      continue;
    }
    const text = control.value;
    if (text === "") continue;
    if (kind === "number") input[name] = Number(text);
    else if (kind === "json") {
      try {
        input[name] = JSON.parse(text);
      } catch {
        input[name] = text;
      }
    } else input[name] = text;
  }
  return input;
}

function clearFieldErrors() {
  for (const { wrapper, error } of state.fields) {
    wrapper.classList.remove("invalid");
    error.textContent = "";
  }
}

/** Puts each 422 item beside its field; items for no field go to #error. */
function showFieldErrors(detail) {
  const loose = [];
  for (const item of Array.isArray(detail) ? detail : []) {
    const loc = Array.isArray(item.loc) ? item.loc : [];
    const name = loc[0] === "body" ? loc[1] : loc[0];
    const entry = state.fields.find((f) => f.name === name);
    if (entry) {
      entry.wrapper.classList.add("invalid");
      entry.error.textContent = entry.error.textContent ? `${entry.error.textContent}; ${item.msg}` : item.msg;
    } else loose.push(`${loc.join(".")}: ${item.msg}`);
  }
  if (loose.length) showError(loose.join("\n"));
}

// ---- running ------------------------------------------------------------------------------

function renderUpdate(update) {
  const position = update.queue_position !== undefined ? ` (position ${update.queue_position})` : "";
  setStatus(`${update.status}${position}`);
  if (Array.isArray(update.logs)) $("logs").textContent = update.logs.map((l) => l.message).join("\n");
}

async function run() {
  const endpoint = currentEndpoint();
  if (!endpoint || state.run) return;
  clearFieldErrors();
  showError("");
  $("result").textContent = "";
  $("logs").textContent = "";
  $("request-id").textContent = "";
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const controller = new AbortController();
  const run = { endpoint: endpoint.id, controller, requestId: null, cancelled: false };
  state.run = run;
  $("run").disabled = true;
  setStatus("SUBMITTING");
  try {
    const answer = mode === "events" ? await runWithEvents(endpoint, run) : await client().subscribe(endpoint.id, {
      input: collectInput(),
      logs: true,
      mode,
      pollInterval: 250,
      abortSignal: controller.signal,
      onEnqueue: (requestId) => {
        run.requestId = requestId;
        $("request-id").textContent = requestId;
        $("cancel").disabled = false;
        setStatus("IN_QUEUE");
      },
      onQueueUpdate: (update) => {
        if (!run.cancelled) renderUpdate(update);
      },
    });
    $("result").textContent = JSON.stringify(answer.data, null, 2);
    setStatus("COMPLETED", mode === "events" ? "events" : "page");
  } catch (error) {
    if (run.cancelled) return;
    if (error instanceof ValidationError) {
      showFieldErrors(error.body && error.body.detail);
      setStatus(`VALIDATION FAILED: ${error.fieldErrors.length} field error(s)`);
    } else {
      setStatus(`FAILED ${describe(error)}`);
      showError(describe(error));
    }
  } finally {
    if (state.run === run) state.run = null;
    $("run").disabled = false;
    $("cancel").disabled = true;
    refreshUsage();
  }
}

/**
 * Submits, then waits for the request's `finished` event on the caller's event stream (a status
 * check every EVENTS_BACKSTOP_MS shows progress meanwhile, and lets falgate learn the end if
 * nothing else told it); then reads the final logs and the result.
 */
async function runWithEvents(endpoint, run) {
  const fal = client();
  const finished = new Promise((resolve, reject) => {
    run.onFinished = resolve;
    run.controller.signal.addEventListener("abort", () => reject(new Error("aborted")));
  });
  await eventsOpen();
  const { request_id: requestId } = await fal.queue.submit(endpoint.id, { input: collectInput() });
  run.requestId = requestId;
  $("request-id").textContent = requestId;
  $("cancel").disabled = false;
  setStatus("IN_QUEUE");
  const backstop = setInterval(async () => {
    try {
      const status = await fal.queue.status(endpoint.id, { requestId, logs: true });
      if (!run.cancelled && !run.ended && status.status !== "COMPLETED") renderUpdate(status);
    } catch {
      // The event stream decides; a failed check is only a missed nudge.
    }
  }, EVENTS_BACKSTOP_MS);
  let event;
  try {
    event = await finished;
  } finally {
    clearInterval(backstop);
  }
  run.ended = true;
  setStatus(`COMPLETED${event.outcome === "error" ? ` (error: ${event.error_type || "error"})` : ""}`, "events");
  const final = await fal.queue.status(endpoint.id, { requestId, logs: true });
  if (Array.isArray(final.logs)) $("logs").textContent = final.logs.map((l) => l.message).join("\n");
  return fal.queue.result(endpoint.id, { requestId });
}

// ---- the caller's event stream -------------------------------------------------------------

/** Opens GET /api/fal/events once (fetch, since EventSource cannot send the token) and keeps
 * it open, resuming with Last-Event-ID when it ends (at its lifetime, or a network break).
 * Resolves once the stream is subscribed. */
function eventsOpen() {
  if (state.events) return state.events.ready;
  const events = { lastId: null };
  events.ready = new Promise((resolve) => (events.subscribed = resolve));
  state.events = events;
  (async () => {
    for (;;) {
      try {
        const headers = authorized({ accept: "text/event-stream" });
        if (events.lastId) headers["last-event-id"] = events.lastId;
        const answer = await fetch("/api/fal/events", { headers });
        if (!answer.ok || !answer.body) throw new Error(`HTTP ${answer.status}`);
        const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            if (block.startsWith(": ok")) events.subscribed();
            else handleEvent(events, block);
          }
        }
      } catch {
        // Reconnected below.
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return events.ready;
}

function handleEvent(events, block) {
  const field = (name) => {
    const line = block.split("\n").find((l) => l.startsWith(`${name}: `));
    return line ? line.slice(name.length + 2) : null;
  };
  const data = field("data");
  if (!data) return;
  events.lastId = field("id") || events.lastId;
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return;
  }
  const run = state.run;
  if (event.type === "finished" && run && run.requestId === event.request_id && run.onFinished) run.onFinished(event);
  refreshRequests();
}

// ---- the caller's requests -------------------------------------------------------------------

/** Lists the caller's recent requests (GET /api/fal/requests); each opens on a click. */
async function refreshRequests() {
  try {
    const answer = await fetch("/api/fal/requests?limit=20", { headers: authorized() });
    if (!answer.ok) return;
    const body = await answer.json();
    $("requests").replaceChildren(
      ...body.requests.map((request) => {
        const item = document.createElement("li");
        item.dataset.requestId = request.request_id;
        item.dataset.status = request.status;
        const open = document.createElement("button");
        open.type = "button";
        open.className = "link";
        open.textContent = request.request_id;
        open.addEventListener("click", () => openRequest(request.request_id, request.endpoint));
        const outcome = request.outcome ? ` ${request.outcome}` : "";
        item.append(open, ` ${request.endpoint} · ${request.status}${outcome} · ${request.submitted_at}`);
        return item;
      }),
    );
    // How many lists were shown (a test waits for the next one).
    $("requests").dataset.shown = String(Number($("requests").dataset.shown || 0) + 1);
  } catch {
    // The list is a convenience: a failed refresh keeps the old one.
  }
}

async function cancel() {
  const run = state.run;
  if (!run || !run.requestId) return;
  run.cancelled = true;
  $("cancel").disabled = true;
  setStatus("CANCELLING");
  try {
    await client().queue.cancel(run.endpoint, { requestId: run.requestId });
    setStatus("CANCELLED");
  } catch (error) {
    setStatus(`CANCEL FAILED ${describe(error)}`);
  } finally {
    run.controller.abort();
  }
}

/** Shows a request by id (of `endpointId`, else the selected endpoint): its status and logs,
 * and its result once completed. */
async function openRequest(requestId, endpointId) {
  const endpoint = endpointId ? { id: endpointId } : currentEndpoint();
  if (!endpoint) return;
  showError("");
  $("result").textContent = "";
  $("request-id").textContent = requestId;
  setStatus("LOADING");
  try {
    const fal = client();
    const status = await fal.queue.status(endpoint.id, { requestId, logs: true });
    renderUpdate(status);
    if (status.status === "COMPLETED") {
      const answer = await fal.queue.result(endpoint.id, { requestId });
      $("result").textContent = JSON.stringify(answer.data, null, 2);
    }
  } catch (error) {
    setStatus(`FAILED ${describe(error)}`);
    showError(describe(error));
  }
}

// ---- usage -----------------------------------------------------------------------------------

function formatSeconds(seconds) {
  if (seconds === undefined || seconds === null) return "";
  if (seconds < 120) return `${Math.ceil(seconds)} s`;
  if (seconds < 7200) return `${Math.ceil(seconds / 60)} min`;
  return `${Math.ceil(seconds / 3600)} h`;
}

/** The caller's limits from GET /api/fal/usage; the panel stays hidden when falgate has none. */
async function refreshUsage() {
  try {
    const answer = await fetch("/api/fal/usage", { headers: authorized() });
    if (!answer.ok) {
      $("usage").hidden = true;
      return;
    }
    const usage = await answer.json();
    $("usage-tier").textContent = usage.tier ? `(tier ${usage.tier})` : "";
    $("usage-rows").replaceChildren(
      ...(usage.limits || []).map((limit) => {
        const row = document.createElement("tr");
        row.dataset.limit = limit.name;
        for (const text of [limit.name, limit.remaining, limit.limit, formatSeconds(limit.reset_seconds)]) {
          const cell = document.createElement("td");
          cell.textContent = text === undefined || text === null ? "" : String(text);
          row.append(cell);
        }
        return row;
      }),
    );
    $("usage").hidden = false;
  } catch {
    $("usage").hidden = true;
  }
}

// ---- start -----------------------------------------------------------------------------------

async function start() {
  state.token = readToken();
  if (!state.token) {
    $("auth").hidden = false;
    setStatus("waiting for a token");
    return;
  }
  $("auth").hidden = true;
  try {
    await loadEndpoints();
  } catch (error) {
    $("auth").hidden = false;
    $("auth-error").textContent = String(error.message || error);
    setStatus("waiting for a token");
    return;
  }
  const mode = params.get("mode");
  if (mode === "streaming" || mode === "polling") document.querySelector(`input[name="mode"][value="${mode}"]`).checked = true;
  $("run-panel").hidden = false;
  $("lookup-panel").hidden = false;
  renderForm();
  refreshUsage();
  refreshRequests();
  eventsOpen();
  setStatus("ready");
  if (params.get("request_id")) openRequest(params.get("request_id"));
  else if (params.get("autorun") === "1") run();
}

$("endpoint").addEventListener("change", renderForm);
$("input-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
$("cancel").addEventListener("click", cancel);
$("requests-refresh").addEventListener("click", refreshRequests);
$("lookup-form").addEventListener("submit", (event) => {
  event.preventDefault();
  openRequest($("lookup").value.trim());
});
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("auth-error").textContent = "";
  start();
});
start();
