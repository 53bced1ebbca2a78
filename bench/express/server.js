// The reference consumer from Adobe's documentation: an Express app that parses
// each delivery with express.json() and logs the body with winston to a file.
// bench/ingest.py starts it as: node server.js PORT LOGFILE [BODY_LIMIT]
// (BODY_LIMIT "default" keeps express.json()'s 100 kB limit).
"use strict";
const express = require("express");
const winston = require("winston");

const [port, logfile, limit] = process.argv.slice(2);
const logger = winston.createLogger({
  level: "info",
  format: winston.format.json(),
  transports: [new winston.transports.File({ filename: logfile })],
});

const app = express();
app.use(limit && limit !== "default" ? express.json({ limit }) : express.json());
app.post("/events", (req, res) => {
  logger.info("event", { body: req.body });
  res.sendStatus(200);
});

const server = app.listen(Number(port), "127.0.0.1", () => {
  const { port: bound } = server.address();
  console.log(`streamd ready: http://127.0.0.1:${bound}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
