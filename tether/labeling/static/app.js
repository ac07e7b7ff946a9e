// tether labeling page: show one task, collect one answer, send it, show the next.
// Plain browser JavaScript, no framework and no network beyond this server.
// Model text is always inserted with textContent, never as HTML: responses are untrusted.
"use strict";

const TOKEN_KEY = "tether-label-token";
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
// while "All done" shows, ask for new tasks this often: a tether rlhf run adds the next round's
const WAIT_FOR_TASKS_MS = 5000;

const state = {
  token: null,
  task: null,          // {id, prompt, responses}
  choice: null,        // "a" | "b" | "tie" | "skip" | "rank"
  ranking: [],         // response indices best -> worst (3+ responses)
  requestId: null,     // one per shown task: resending after a network error is a no-op on the server
  lastAnswerId: null,  // undo names it, so a repeated click cannot undo two answers
  busy: false,
  waitTimer: null,     // the pending check for new tasks while "All done" shows
};

const $ = (id) => document.getElementById(id);

// -- server calls -----------------------------------------------------------------------
async function api(method, path, body) {
  const options = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("cannot reach the server; nothing was lost, try again");
  }
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut("Your token was not accepted: enter it again.");
    throw new Error("token refused");
  }
  if (!response.ok) throw new Error(data.error || "server error " + response.status);
  return data;
}

function newRequestId() {
  // crypto.randomUUID exists only on https/localhost pages; getRandomValues exists everywhere
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- views ------------------------------------------------------------------------------
function show(section) {
  for (const id of ["login", "task", "done"]) $(id).hidden = id !== section;
}

function setStatus(text, isError) {
  $("status").textContent = text || "";
  $("status").className = isError ? "error" : "";
}

function setProgress(progress) {
  $("progress-text").textContent = progress.done + " of " + progress.total;
  $("progress-bar").max = Math.max(progress.total, 1);
  $("progress-bar").value = progress.done;
}

function showTask(task, progress) {
  setProgress(progress);
  state.task = task;
  state.choice = null;
  state.ranking = [];
  state.requestId = newRequestId();
  clearTimeout(state.waitTimer);
  if (!task) {
    show("done");
    state.waitTimer = setTimeout(checkForNewTasks, WAIT_FOR_TASKS_MS);
    return;
  }
  $("round").hidden = task.round === null || task.round === undefined;
  $("round").textContent = $("round").hidden ? "" : "Round " + task.round;
  const pair = task.responses.length === 2;
  document.body.classList.toggle("ranking-mode", !pair);
  $("prompt").textContent = task.prompt;
  $("instructions").textContent = pair
    ? "Which response is better? Choose, optionally say why, then submit."
    : "Click the responses (or press their numbers) from best to worst.";
  const list = $("responses");
  list.replaceChildren();
  task.responses.forEach((text, i) => list.append(responseCard(text, i, pair)));
  $("reason").value = "";
  // after Enter in the reason box the focus would stay there, and the next "1" would be typed
  // into it instead of choosing A: hand the keys back to the page
  if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
  show("task");
  render();
}

function responseCard(text, index, pair) {
  const card = document.createElement("article");
  card.className = "response";
  card.dataset.index = String(index);
  card.tabIndex = -1;
  const head = document.createElement("h3");
  const name = document.createElement("span");
  name.textContent = pair ? "Response " + LETTERS[index] : "Response " + (index + 1);
  const badge = document.createElement("span");
  badge.className = "badge";
  head.append(name, badge);
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  card.append(head, body);
  card.addEventListener("click", () => (pair ? choose(index === 0 ? "a" : "b") : rank(index)));
  return card;
}

// Reflect state.choice / state.ranking on the buttons, cards and the submit button.
function render() {
  if (!state.task) return;
  const k = state.task.responses.length;
  for (const button of document.querySelectorAll("#choices [data-choice]")) {
    button.setAttribute("aria-pressed", String(button.dataset.choice === state.choice));
  }
  for (const card of document.querySelectorAll("#responses .response")) {
    const index = Number(card.dataset.index);
    const place = state.ranking.indexOf(index);
    let badge = "";
    if (k === 2 && state.ranking.length) badge = place === 0 ? "better" : "";
    if (k > 2 && place >= 0) badge = ordinal(place + 1);
    card.querySelector(".badge").textContent = badge;
    card.classList.toggle("chosen", badge !== "");
  }
  const complete = state.choice && (state.choice !== "rank" || state.ranking.length === k);
  $("submit").disabled = !complete || state.busy;
}

function ordinal(n) {
  return n + (n === 1 ? "st" : n === 2 ? "nd" : n === 3 ? "rd" : "th");
}

// -- answering --------------------------------------------------------------------------
function choose(choice) {
  if (!state.task || state.busy) return;
  const k = state.task.responses.length;
  if ((choice === "a" || choice === "b") && k !== 2) return;
  state.choice = choice;
  state.ranking = choice === "a" ? [0, 1] : choice === "b" ? [1, 0] : [];
  render();
}

function rank(index) {
  if (!state.task || state.busy) return;
  const k = state.task.responses.length;
  const place = state.ranking.indexOf(index);
  if (place >= 0) {
    state.ranking.splice(place, 1);  // clicking a ranked response takes it back out
  } else {
    state.ranking.push(index);
    if (state.ranking.length === k - 1) {  // the one left is the worst: no need to click it
      for (let i = 0; i < k; i++) if (!state.ranking.includes(i)) state.ranking.push(i);
    }
  }
  state.choice = state.ranking.length ? "rank" : null;
  render();
}

async function submit() {
  if (!state.task || state.busy || $("submit").disabled) return;
  state.busy = true;
  render();
  const body = {
    task_id: state.task.id,
    choice: state.choice,
    ranking: state.choice === "rank" ? state.ranking : null,
    reason: $("reason").value.trim() || null,
    request_id: state.requestId,
  };
  try {
    const saved = await api("POST", "api/answers", body);
    state.lastAnswerId = saved.answer.id;
    setStatus("Saved.");
    await loadNext();
  } catch (err) {
    setStatus(err.message, true);
    if (/already answered/.test(err.message)) await loadNext();
  } finally {
    state.busy = false;
    render();
  }
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  try {
    const body = state.lastAnswerId === null ? {} : { answer_id: state.lastAnswerId };
    const result = await api("POST", "api/undo", body);
    state.lastAnswerId = null;
    if (!result.answer) {
      setStatus("Nothing to undo.");
      return;
    }
    setStatus("Undone: answer this task again.");
    showTask(result.task, result.progress);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    state.busy = false;
    render();
  }
}

async function loadNext() {
  const next = await api("GET", "api/next");
  showTask(next.task, next.progress);
}

async function checkForNewTasks() {
  if (state.busy || !state.token || state.task) return;
  try {
    await loadNext();
  } catch (err) {
    state.waitTimer = setTimeout(checkForNewTasks, WAIT_FOR_TASKS_MS);  // the server may be between rounds
  }
}

// -- keyboard ---------------------------------------------------------------------------
function onKey(event) {
  const typing = event.target instanceof HTMLInputElement;
  if (typing) {
    if (event.target.id === "reason" && event.key === "Enter") {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape") {
      event.target.blur();
    }
    return;  // letters typed into the reason are text, not shortcuts
  }
  if (event.altKey || event.metaKey || (event.ctrlKey && event.key !== "z")) return;
  const action = keyAction(event.key, event.ctrlKey);
  if (action) {
    event.preventDefault();  // also stops Enter from clicking a focused button a second time
    action();
  }
}

function keyAction(key, ctrl) {
  if (!state.token) return null;
  if ((key === "u" && !ctrl) || (key === "z" && ctrl)) return undo;
  if ($("task").hidden || !state.task) return null;
  const k = state.task.responses.length;
  if (key === "Enter") return submit;
  if (key === "t") return () => choose("tie");
  if (key === "s") return () => choose("skip");
  if (k === 2 && key === "1") return () => choose("a");
  if (k === 2 && key === "2") return () => choose("b");
  const n = Number(key);
  if (k > 2 && Number.isInteger(n) && n >= 1 && n <= k) return () => rank(n - 1);
  if (k > 2 && key === "Backspace") return () => rank(state.ranking[state.ranking.length - 1]);
  return null;
}

// -- token ------------------------------------------------------------------------------
function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("who").textContent = "";
  $("sign-out").hidden = true;
  show("login");
  setStatus(message || "", Boolean(message));
}

async function start() {
  // ?token=... is saved once, then taken out of the address bar and the history
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    localStorage.setItem(TOKEN_KEY, params.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  state.token = localStorage.getItem(TOKEN_KEY);
  if (!state.token) {
    signOut();
    return;
  }
  try {
    const me = await api("GET", "api/me");
    $("who").textContent = "labeling as " + me.labeler;
    $("sign-out").hidden = false;
    await loadNext();
  } catch (err) {
    if (state.token) setStatus(err.message, true);
  }
}

function wire() {
  for (const button of document.querySelectorAll("#choices [data-choice]")) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  $("clear-ranking").addEventListener("click", () => {
    state.ranking = [];
    state.choice = null;
    render();
  });
  $("submit").addEventListener("click", submit);
  $("undo").addEventListener("click", undo);
  $("undo-done").addEventListener("click", undo);
  $("sign-out").addEventListener("click", () => signOut());
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    setStatus("");
    start();
  });
  document.addEventListener("keydown", onKey);
}

wire();
start();
