// QueueNet demo page: pick, drop or paste an image; POST /predict (or the model picked from
// GET /models); show the top-k labels and which model version answered.
// No dependencies and no request outside this origin (the page's CSP forbids it anyway).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const fileInput = $("file");
  const drop = $("drop");
  const preview = $("preview");
  const dropText = $("drop-text");
  const fileName = $("file-name");
  const topK = $("top-k");
  const modelPicker = $("model");
  const apiKey = $("api-key");
  const submit = $("submit");
  const output = $("output");
  const status = $("status");
  const results = $("results");
  const errorBox = $("error");
  const errorTitle = $("error-title");
  const errorText = $("error-text");

  let current = null; // the File (or pasted Blob) to classify
  let previewUrl = null;
  let inFlight = null; // AbortController of the request under way

  // What went wrong, in words, by the API's error code (README, "Errors").
  const TITLES = {
    invalid_image: "The image could not be read",
    invalid_request: "The request was not accepted",
    request_entity_too_large: "The image is too large",
    queue_full: "The service is busy",
    queue_unavailable: "The service cannot reach its queue",
    model_unavailable: "The model is not ready yet",
    model_not_found: "This model is not served here",
    model_version_not_found: "This model version is not served here",
    wrong_model: "The image was prepared for another model version",
    prediction_timeout: "The prediction took too long",
    prediction_failed: "The model could not classify this image",
    invalid_input: "The model could not classify this image",
    not_found: "This server has no prediction service here",
    method_not_allowed: "This server has no prediction service here",
    internal_error: "The server ran into an error",
  };
  const STATUS_WORDS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
  };

  function httpStatus(response) {
    // Our own words first: servers differ in how they spell the reason phrase (or drop it).
    const words = STATUS_WORDS[response.status] || response.statusText || "";
    return `HTTP ${response.status}${words ? " " + words : ""}`;
  }

  function formatBytes(size) {
    if (size < 1024) return `${size} bytes`;
    if (size < 1024 * 1024) return `${Math.round(size / 1024)} KB`;
    return `${(size / (1024 * 1024)).toFixed(1)} MB`;
  }

  function formatPercent(probability) {
    const percent = probability * 100;
    if (percent > 0 && percent < 0.1) return "< 0.1%";
    return `${percent.toFixed(1)}%`;
  }

  function clearOutput() {
    results.replaceChildren();
    status.textContent = "";
    errorBox.hidden = true;
    errorTitle.textContent = "";
    errorText.textContent = "";
  }

  function showError(title, text, detail) {
    results.replaceChildren();
    status.textContent = "";
    errorTitle.textContent = `${title}:`;
    errorText.textContent = [text, detail].filter(Boolean).join(" ");
    errorBox.hidden = false;
  }

  function showPredictions(predictions, elapsedMs, model) {
    const items = predictions.map((p) => {
      const item = document.createElement("li");
      item.className = "result";
      const row = document.createElement("div");
      row.className = "row";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      const index = document.createElement("span");
      index.className = "index";
      index.textContent = `#${p.index}`;
      index.title = "class index";
      const percent = document.createElement("span");
      percent.className = "percent";
      percent.textContent = formatPercent(p.probability);
      row.append(label, index, percent);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, p.probability)) * 100}%`;
      bar.append(fill);
      item.append(row, bar);
      return item;
    });
    results.replaceChildren(...items);
    const by = model && model.name ? ` by ${model.name} version ${model.version}` : "";
    status.textContent = `Answered${by} in ${Math.round(elapsedMs)} ms`;
  }

  // The picker's choices, from GET /models: each model (its serving version) and each of its
  // versions. Without them (an old server, a key needed first) the default model still works.
  function option(value, text) {
    return Object.assign(document.createElement("option"), { value, textContent: text });
  }

  async function loadModels() {
    const headers = {};
    const key = apiKey.value.trim();
    if (key) headers["X-API-Key"] = key;
    let body = null;
    try {
      const response = await fetch("/models", { headers, cache: "no-store" });
      if (response.ok) body = await response.json();
    } catch (_) {
      // unreachable or not JSON: keep what the picker offers
    }
    if (!body || !Array.isArray(body.models)) return;
    const chosen = modelPicker.value;
    const choices = [option("", body.default ? `the default model (${body.default})` : "the default model")];
    for (const model of body.models) {
      const group = Object.assign(document.createElement("optgroup"), { label: model.name });
      const serving = model.serving ? ` (version ${model.serving})` : "";
      group.append(option(`/models/${encodeURIComponent(model.name)}/predict`, `${model.name}${serving}`));
      for (const v of model.versions || []) {
        const state = v.ready ? "" : " – not ready";
        group.append(option(
          `/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(v.version)}/predict`,
          `${model.name} version ${v.version}${state}`,
        ));
      }
      choices.push(group);
    }
    modelPicker.replaceChildren(...choices);
    if (Array.from(modelPicker.options).some((o) => o.value === chosen)) modelPicker.value = chosen;
  }

  // The API's error body, or null when the answer is not the API's JSON (a proxy's page...).
  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") return body.error;
    } catch (_) {
      // not JSON: described by its status alone
    }
    return null;
  }

  async function describeFailure(response) {
    const error = await errorOf(response);
    const detail = `(${httpStatus(response)})`;
    if (!error) {
      return ["The server could not answer", `it gave no reason (${httpStatus(response)}).`, ""];
    }
    let title = TITLES[error.code] || `The server answered ${httpStatus(response)}`;
    let text = error.message.replace(/^field 'image': /, "");
    if (response.status === 401) {
      title = apiKey.value.trim() ? "The API key was not accepted" : "An API key is needed";
      text = "enter a valid key in the API key field (it is sent as X-API-Key).";
    }
    if (!/[.!?]$/.test(text)) text += ".";
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    if (Number.isFinite(retry)) text += ` Try again in ${retry} s.`;
    return [title, text, detail];
  }

  async function classify() {
    if (!current) return;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    clearOutput();
    status.textContent = "Classifying…";
    output.setAttribute("aria-busy", "true");

    const body = new FormData();
    body.append("image", current, current.name || "pasted-image.png");
    const headers = {};
    const key = apiKey.value.trim();
    if (key) headers["X-API-Key"] = key;
    // Left at its default, top_k is not sent: the server then answers its own default,
    // capped at the model's number of labels (a model may have fewer than 5).
    const k = topK.value.trim();
    const path = modelPicker.value || "/predict";
    const url = k && k !== topK.defaultValue ? `${path}?top_k=${encodeURIComponent(k)}` : path;

    const started = performance.now();
    try {
      const response = await fetch(url, {
        method: "POST", body, headers, signal: controller.signal,
        credentials: "same-origin", cache: "no-store",
      });
      if (response.ok) {
        const data = await response.json();
        const elapsedMs = performance.now() - started;
        if (inFlight !== controller) return;
        showPredictions(data.predictions || [], elapsedMs, data.model);
      } else {
        const [title, text, detail] = await describeFailure(response);
        if (inFlight !== controller) return;
        showError(title, text, detail);
      }
    } catch (error) {
      if (error.name === "AbortError" || inFlight !== controller) return;
      if (!(error instanceof TypeError)) { // an answer came, but not the API's JSON
        showError("The answer could not be read", "the server did not send predictions.", "");
        return;
      }
      showError(
        "Cannot reach the server",
        `check your connection and that QueueNet is running at ${location.origin}.`,
        "",
      );
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        output.setAttribute("aria-busy", "false");
      }
    }
  }

  function useImage(file) {
    if (!file) return;
    current = file;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = `Preview of ${file.name || "the pasted image"}`;
    preview.hidden = false;
    drop.classList.add("has-image");
    dropText.replaceChildren(
      Object.assign(document.createElement("strong"), { textContent: "Choose another image" }),
      ", drop or paste one",
    );
    fileName.textContent = `${file.name || "pasted image"} · ${formatBytes(file.size)}`;
    submit.disabled = false;
    classify();
  }

  preview.addEventListener("error", () => {
    preview.hidden = true;
    drop.classList.remove("has-image");
  });

  fileInput.addEventListener("change", () => {
    useImage(fileInput.files && fileInput.files[0]);
    fileInput.value = ""; // picking the same file again still counts as a change
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    classify();
  });

  modelPicker.addEventListener("change", () => {
    if (current) classify();
  });
  apiKey.addEventListener("change", loadModels); // a key may be what GET /models needed
  loadModels();

  // Drag and drop: anywhere on the page, highlighted over the drop zone.
  let depth = 0;
  const hasFiles = (event) =>
    event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  drop.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) drop.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault(); // allow dropping
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", (event) => {
    if (!event.dataTransfer) return;
    event.preventDefault(); // never navigate away to the dropped file
    depth = 0;
    drop.classList.remove("dragging");
    const file = event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) {
      useImage(file);
    } else {
      showError("Nothing to classify", "drop an image file (PNG, JPEG, WebP…).", "");
    }
  });

  // Paste (Ctrl+V / Cmd+V) an image from the clipboard, anywhere on the page.
  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    if (!data) return;
    const item = Array.from(data.items || []).find((i) => i.kind === "file");
    const file = (item && item.getAsFile()) || (data.files && data.files[0]);
    if (file) {
      event.preventDefault();
      useImage(file);
    } else if (!(event.target instanceof HTMLInputElement)) {
      showError("Nothing to classify", "the clipboard holds no image; copy one first.", "");
    }
  });
})();
