// A MicroPython session under Node that answers one request per stdin line,
// like a board's raw REPL: the state (modules, files, an emulated chip) lives
// until stdin closes. First line (JSON): {"dirs": {"/": "/abs/host/dir", ...},
// "path": ["/hil"], "cwd": "/", "heap": bytes}; every file of each host dir is
// copied (.mpy, .json, .crt too). Then per line one of
//   {"op": "exec", "code": "..."}           -> {"ok": true, "out": "..."}
//   {"op": "put", "path": "/x", "b64": ".."} -> {"ok": true, "out": ""}
//   {"op": "get", "path": "/x"}              -> {"ok": true, "b64": "..."}
// and one JSON line back; an exception gives {"ok": false, "out", "error"}.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { readFileSync } from "node:fs";
import { copyTree, mkdirs } from "./mp_fs.mjs";
import { createInterface } from "node:readline";

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]();
const first = await lines.next();
const req = JSON.parse(first.value);
let out = [];
const mp = await loadMicroPython({
  heapsize: req.heap || 8 * 1024 * 1024,
  stdout: (s) => out.push(s),
  stderr: (s) => out.push(s),
});

for (const [target, host] of Object.entries(req.dirs || {})) copyTree(mp, host, target);
mp.runPython("import sys, os\n" + (req.path || []).map((p) => `sys.path.append(${JSON.stringify(p)})\n`).join("")
  + `os.chdir(${JSON.stringify(req.cwd || "/")})\n`);
process.stdout.write(JSON.stringify({ ok: true, ready: true }) + "\n");

for (;;) {
  const next = await lines.next();
  if (next.done) break;
  if (!next.value.trim()) continue;
  const r = JSON.parse(next.value);
  out = [];
  let reply;
  try {
    if (r.op === "exec") {
      mp.runPython(r.code);
      reply = { ok: true, out: out.join("\n") };
    } else if (r.op === "put") {
      mkdirs(mp, r.path.split("/").slice(0, -1).join("/"));
      mp.FS.writeFile(r.path, Buffer.from(r.b64, "base64"));
      reply = { ok: true, out: "" };
    } else if (r.op === "get") {
      reply = { ok: true, b64: Buffer.from(mp.FS.readFile(r.path)).toString("base64") };
    } else {
      reply = { ok: false, out: "", error: "unknown op " + r.op };
    }
  } catch (e) {
    reply = { ok: false, out: out.join("\n"), error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
