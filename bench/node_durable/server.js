// A durable Node receiver: what a careful engineer would write instead of streamd.
// Express parses each delivery; better-sqlite3 stores its events in one transaction
// (WAL, synchronous=FULL: an fsync per commit) with a UNIQUE event id, so a redelivery
// is dropped; the 200 is sent only after the commit. The dedup key is streamd's: the
// CloudEvent id, else eventid, else event_id; a legacy push's marketoGUID per activity.
// Malformed bodies get a 400, a storage failure a 503 (the sender retries).
// bench/ingest.py starts it as: node server.js PORT DBFILE
"use strict";
const express = require("express");
const Database = require("better-sqlite3");

const MAX_KEY_LENGTH = 512;
const [port, dbfile] = process.argv.slice(2);

const db = new Database(dbfile);
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
// better-sqlite3 builds SQLite with WAL synchronous NORMAL by default: make sure.
if (db.pragma("journal_mode", { simple: true }) !== "wal" || db.pragma("synchronous", { simple: true }) !== 2) {
  throw new Error("could not set journal_mode=WAL and synchronous=FULL");
}
db.exec(
  "CREATE TABLE IF NOT EXISTS events (" +
    "seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)",
);
const insert = db.prepare(
  "INSERT INTO events (event_id, body) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING",
);
// One transaction per request: all its events or none.
const store = db.transaction((events) => {
  let accepted = 0;
  for (const [key, body] of events) accepted += insert.run(key, body).changes;
  return accepted;
});

class BadRequest extends Error {}

function key(value, path) {
  if (value === undefined || value === null || value === "") return null;
  if (Number.isSafeInteger(value)) value = String(value);
  if (typeof value !== "string") throw new BadRequest(`${path}: an event id must be a string`);
  if (value.length > MAX_KEY_LENGTH) {
    throw new BadRequest(`${path}: an event id longer than ${MAX_KEY_LENGTH} characters`);
  }
  return value;
}

function isObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

// [key, JSON text] for each event of one top-level item (a legacy push or an I/O event).
function eventsOf(item, path) {
  if (!isObject(item)) throw new BadRequest(`${path}: expected an object`);
  if (item.activities !== undefined) {
    if (!Array.isArray(item.activities)) throw new BadRequest(`${path}.activities: not an array`);
    return item.activities.map((activity, i) => {
      const at = `${path}.activities[${i}]`;
      if (!isObject(activity)) throw new BadRequest(`${at}: expected an object`);
      const k = key(activity.marketoGUID, `${at}.marketoGUID`);
      if (k === null) throw new BadRequest(`${at}: no marketoGUID`);
      return [k, JSON.stringify(activity)];
    });
  }
  let event = item; // a CloudEvent, or a wrapper {event: {body: CloudEvent}} / {event: CloudEvent}
  if (item.event !== undefined) {
    if (!isObject(item.event)) throw new BadRequest(`${path}.event: expected an object`);
    event = item.event.body !== undefined ? item.event.body : item.event;
    if (!isObject(event)) throw new BadRequest(`${path}.event.body: expected an object`);
  }
  const k =
    key(event.id, `${path}.id`) ?? key(item.eventid, `${path}.eventid`) ??
    key(item.event_id, `${path}.event_id`);
  if (k === null) {
    throw new BadRequest(`${path}: the event has no id (none of id, eventid, event_id)`);
  }
  return [[k, JSON.stringify(item)]];
}

const app = express();
// Every content type as JSON (Adobe sends application/cloudevents+json too).
app.use(express.json({ limit: "10mb", strict: false, type: () => true }));
app.post("/events", (req, res) => {
  const items = Array.isArray(req.body) ? req.body : [req.body];
  if (items.length === 0) throw new BadRequest("$: an empty batch");
  const paths = Array.isArray(req.body) ? items.map((_, i) => `$[${i}]`) : ["$"];
  const events = items.flatMap((item, i) => eventsOf(item, paths[i]));
  const accepted = store(events);
  res.json({ accepted, duplicates: events.length - accepted });
});
// Malformed (400) and too large (413) from the parser, ours (400), else 503: retry later.
app.use((err, req, res, next) => {
  const status =
    err instanceof BadRequest ? 400 : err.status >= 400 && err.status < 500 ? err.status : 503;
  if (status === 503) console.error(err);
  res.status(status).json({ error: status === 503 ? "storage unavailable" : err.message });
});

const server = app.listen(Number(port), "127.0.0.1", () => {
  const { port: bound } = server.address();
  console.log(`streamd ready: http://127.0.0.1:${bound}`);
});
process.on("SIGTERM", () =>
  server.close(() => {
    db.close();
    process.exit(0);
  }),
);
