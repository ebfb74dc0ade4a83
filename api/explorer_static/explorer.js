// traitflow's profile explorer (api/explorer.py says why it is built this way).
//
// The admin key lives in this tab's sessionStorage only: it is sent as an
// Authorization header on each call to the JSON API, never put in a URL or a cookie,
// and gone when the tab closes. Everything a profile holds is inserted as text
// (textContent), never as markup: traits are whatever an event sender chose.
"use strict";

const KEY_STORAGE = "traitflow.explorer.key";
// where a view may say which rule version made it (none yet: then nothing is shown)
const RULE_VERSION_FIELDS = ["rules_version", "rule_version", "rulesVersion"];

const $ = (id) => document.getElementById(id);

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function say(text, kind) {
  const message = $("message");
  message.textContent = text || "";
  message.className = kind || "";
}

// A call to the JSON API with the key: {status, body}; status 0 when it did not answer.
async function call(path, key) {
  let response;
  try {
    response = await fetch(path, {
      headers: { Authorization: "Bearer " + (key || storedKey()), Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    return { status: 0, body: null };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  return { status: response.status, body: body };
}

// What to tell the operator about a failed call; a refused key is forgotten.
function failure(result) {
  const detail = result.body && (result.body.error || result.body.message);
  switch (result.status) {
    case 0:
      return "The API did not answer: is it running?";
    case 401:
      forgetKey();
      return "The key was refused (unknown, revoked or mistyped): enter an admin key.";
    case 403:
      forgetKey();
      return "This key is not an admin key: the explorer needs one (traitflow keys create --admin).";
    case 429:
      return "Rate limit reached for this key: try again in a moment.";
    default:
      return detail ? String(detail) : "The API answered " + result.status + ".";
  }
}

function showKeyState() {
  const set = storedKey() !== null;
  $("key-form").hidden = set;
  $("key-set").hidden = !set;
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
  for (const id of ["lookup-form", "profile", "rules-section"]) {
    if ($(id)) $(id).hidden = true;
  }
}

function text(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function row(cells, name) {
  const tr = document.createElement("tr");
  if (name !== undefined) tr.dataset.name = name;
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = text(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const tr of rows) body.appendChild(tr);
  if (rows.length === 0) {
    const tr = row([empty]);
    tr.className = "empty";
    tr.firstChild.colSpan = $(tableId).querySelectorAll("th").length;
    body.appendChild(tr);
  }
}

function option(value) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = value;
  return element;
}

// ---- the profile page -----------------------------------------------------------

let lookups = [];
let audienceDescriptions = null;

function showIndexes() {
  const chosen = lookups.find((one) => one.collection === $("lookup-entity").value);
  $("lookup-index").replaceChildren(...(chosen ? chosen.indexes : []).map(option));
}

async function startProfilePage(key) {
  const result = await call("/explorer/api/entities", key);
  if (result.status !== 200) return failure(result);
  lookups = result.body.entities;
  $("lookup-entity").replaceChildren(
    ...lookups.map((one) => {
      const element = option(one.collection);
      element.textContent = one.entity + " (" + one.collection + ")";
      return element;
    }),
  );
  showIndexes();
  $("lookup-form").hidden = false;
  return null;
}

async function describedAudiences() {
  if (audienceDescriptions === null) {
    const result = await call("/v1/audiences");
    audienceDescriptions = {};
    if (result.status === 200) {
      for (const audience of result.body.audiences) {
        audienceDescriptions[audience.name] = audience.description;
      }
    }
  }
  return audienceDescriptions;
}

function ruleVersion(view) {
  for (const field of RULE_VERSION_FIELDS) {
    if (view[field] !== undefined && view[field] !== null) return view[field];
  }
  return null;
}

function showProfile(view, descriptions) {
  const provenance = view.provenance || {};
  const version = ruleVersion(view);
  $("profile-id").textContent = view.id;
  const summary = $("profile-summary");
  summary.replaceChildren();
  const facts = [
    ["Entity", view.entity],
    ["Version", view.version],
    ["First seen", view.first_seen],
    ["Last seen", view.last_seen],
  ];
  if (version !== null) facts.push(["Rule version", version]);
  for (const [term, value] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text(value);
    summary.append(dt, dd);
  }
  const made = text(provenance.attributes) + (version !== null ? "; rule version " + text(version) : "");
  fill(
    "attributes",
    Object.entries(view.attributes || {}).map(([name, value]) => row([name, value, made], name)),
    "No attributes",
  );
  const origins = provenance.traits || {};
  fill(
    "traits",
    Object.entries(view.traits || {}).map(([name, value]) => {
      const origin = origins[name] || {};
      return row([name, value, origin.source, origin.timestamp], name);
    }),
    "No traits",
  );
  const identities = [];
  for (const [type, values] of Object.entries(view.identities || {})) {
    for (const value of values) identities.push(row([type, value], type + ":" + value));
  }
  fill("identities", identities, "No identities");
  fill(
    "audiences",
    Object.entries(view._audiences || {}).map(([name, member]) => {
      const tr = row([name, member ? "yes" : "no", descriptions[name]], name);
      tr.className = member ? "member" : "not-member";
      return tr;
    }),
    "No audiences declared for this entity",
  );
  $("profile").hidden = false;
}

async function lookUp(event) {
  event.preventDefault();
  const collection = $("lookup-entity").value;
  const index = $("lookup-index").value;
  const value = $("lookup-value").value.trim();
  if (!value) return;
  say("Looking up…");
  const path =
    "/v1/collections/" + encodeURIComponent(collection) + "/records/" +
    encodeURIComponent(index) + "/" + encodeURIComponent(value) + "?provenance=true";
  const result = await call(path);
  if (result.status === 404) {
    $("profile").hidden = true;
    return say("No profile with " + index + " = " + JSON.stringify(value) + ".", "warning");
  }
  if (result.status !== 200) {
    $("profile").hidden = true;
    return say(failure(result), "error");
  }
  showProfile(result.body, await describedAudiences());
  say("");
}

// ---- the rules page -------------------------------------------------------------

// The page's one source of rules (api/explorer.py's listed_rules says where they come
// from): the rule file's, then those made through the computed-attributes API.
async function loadRules(key) {
  const result = await call("/explorer/api/rules", key);
  if (result.status !== 200) return { failed: result };
  return {
    rules: result.body.rules,
    version: result.body.rulesVersion,
    recomputation: result.body.recomputation,
  };
}

function percent(fraction) {
  return Math.floor(Math.max(0, Math.min(1, fraction)) * 100) + "%";
}

// A backfill's progress as the catalog holds it: a fraction, {done, total}, {fraction}
// or {percent}, with an optional ETA; anything else is shown as it is.
function progress(backfill) {
  if (backfill === null || backfill === undefined) return "—";
  if (typeof backfill === "number") return percent(backfill);
  if (typeof backfill !== "object") return text(backfill);
  let done = null;
  if (typeof backfill.fraction === "number") done = percent(backfill.fraction);
  else if (typeof backfill.percent === "number") done = percent(backfill.percent / 100);
  else if (typeof backfill.done === "number" && typeof backfill.total === "number") {
    done = percent(backfill.total > 0 ? backfill.done / backfill.total : 1);
    done += " (" + backfill.done + " of " + backfill.total + ")";
  }
  if (done === null) return text(backfill);
  const eta = backfill.eta !== undefined ? backfill.eta : backfill.eta_s;
  if (eta === undefined || eta === null) return done;
  return done + ", ETA " + (typeof eta === "number" ? Math.ceil(eta) + " s" : text(eta));
}

async function startRulesPage(key) {
  const loaded = await loadRules(key);
  if (loaded.failed) return failure(loaded.failed);
  let heading = loaded.version ? "rules version " + loaded.version : "";
  const recomputing = loaded.recomputation;
  if (recomputing) {
    // every attribute computed again, for source delete jobs (README, "Sources, merge
    // policies and deletes"): the values served meanwhile are the old ones
    const jobs = recomputing.jobs.length + " source delete job" + (recomputing.jobs.length === 1 ? "" : "s");
    heading += " · every attribute recomputed for " + jobs + ": " + recomputing.phase;
    heading += ", " + progress(recomputing.backfill);
  }
  $("rules-version").textContent = heading;
  fill(
    "rules",
    loaded.rules.map((rule) =>
      row(
        [
          rule.name,
          rule.entity,
          rule.function,
          rule.window || "",
          rule.description || rule.expression || "",
          rule.origin === "api" ? "API" : "rule file",
          rule.status,
          progress(rule.backfill),
        ],
        rule.name,
      ),
    ),
    "No rules",
  );
  $("rules-section").hidden = false;
  return null;
}

// ---- both pages -----------------------------------------------------------------

async function start(key) {
  const page = document.body.dataset.page;
  const problem = page === "rules" ? await startRulesPage(key) : await startProfilePage(key);
  if (problem) say(problem, "error");
  return problem === null;
}

async function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  $("key-input").value = "";
  if (!key) return;
  say("Checking the key…");
  if (await start(key)) {
    sessionStorage.setItem(KEY_STORAGE, key);
    showKeyState();
    say("");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", useKey);
  $("key-forget").addEventListener("click", () => {
    forgetKey();
    say("Key forgotten.");
  });
  if ($("lookup-form")) {
    $("lookup-form").addEventListener("submit", lookUp);
    $("lookup-entity").addEventListener("change", showIndexes);
  }
  showKeyState();
  if (storedKey() !== null) start(storedKey());
  else say("Enter an admin key to start.");
});
