#!/usr/bin/env node
// Drives Debian's Chromium (headless, never a downloaded browser) with playwright-core.
//
// Input: one JSON command per line on stdin, each with a "seq". Output: one JSON line per answer:
//   {"type":"ready","version":"<chromium version>"}          once, when the browser is up
//   {"type":"result","seq":N,"value":...}                    a command succeeded
//   {"type":"error","seq":N,"message":"..."}                 a command failed
//   {"type":"console","page":"a","text":"..."}               the page logged or threw
//
// Commands (page: a name the test chooses; all pages share one browser context, like tabs)
//   {"op":"open","page":"a","url":"http://..."}               a new tab at url
//   {"op":"click","page":"a","selector":"#register"}
//   {"op":"fill","page":"a","selector":"#code","value":"123456"}
//   {"op":"wait","page":"a","selector":"#log li","timeout":5000}  -> its text once visible
//   {"op":"text","page":"a","selector":"#code"}              -> its text now
//   {"op":"eval","page":"a","expression":"1 + 1"}             -> the JSON value
//   {"op":"exit"}
// Environment: CHROMIUM (default /usr/bin/chromium), USER_DATA_DIR (a fresh directory).
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const readline = require("readline");
const { chromium } = require("playwright-core");

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function main() {
  const userDataDir =
    process.env.USER_DATA_DIR || fs.mkdtempSync(path.join(os.tmpdir(), "alliswell-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ARGS,
  });
  const pages = new Map();
  const pageOf = (cmd) => {
    const page = pages.get(cmd.page);
    if (!page) throw new Error(`no page ${cmd.page}`);
    return page;
  };

  const ops = {
    async open(cmd) {
      const page = await context.newPage();
      page.on("console", (msg) => report({ type: "console", page: cmd.page, text: msg.text() }));
      page.on("pageerror", (err) => report({ type: "console", page: cmd.page, text: String(err) }));
      pages.set(cmd.page, page);
      await page.goto(cmd.url);
      return page.url();
    },
    click: (cmd) => pageOf(cmd).click(cmd.selector, { timeout: 5000 }),
    fill: (cmd) => pageOf(cmd).fill(cmd.selector, cmd.value, { timeout: 5000 }),
    async wait(cmd) {
      const found = await pageOf(cmd).waitForSelector(cmd.selector, {
        state: "visible",
        timeout: cmd.timeout || 5000,
      });
      return found.textContent();
    },
    text: (cmd) => pageOf(cmd).textContent(cmd.selector, { timeout: 5000 }),
    eval: (cmd) => pageOf(cmd).evaluate(cmd.expression),
    async exit() {
      await context.close();
      process.exit(0);
    },
  };

  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", async (line) => {
    if (!line.trim()) return;
    let cmd = {};
    try {
      cmd = JSON.parse(line);
      const op = ops[cmd.op];
      if (!op) throw new Error(`unknown op ${cmd.op}`);
      const value = await op(cmd);
      report({ type: "result", seq: cmd.seq, value: value === undefined ? null : value });
    } catch (err) {
      report({ type: "error", seq: cmd.seq, message: String((err && err.message) || err) });
    }
  });
  rl.on("close", () => ops.exit());
  report({ type: "ready", version: context.browser() ? context.browser().version() : null });
}

main().catch((err) => {
  process.stderr.write(`browser driver failed: ${(err && err.stack) || err}\n`);
  process.exit(1);
});
