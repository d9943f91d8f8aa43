// Runs Python code on MicroPython (the WebAssembly port) under Node.
// Input (stdin, JSON): {"dirs": {"/fw": "/abs/host/dir", ...}, "path": ["/fw"],
//                       "code": "...", "heap": bytes}
// Every host dir is copied into MicroPython's in-memory filesystem, so the
// firmware imports exactly as it would from an ESP32's flash.
// Output: MicroPython's stdout on our stdout; an uncaught Python exception
// prints its traceback on stderr and exits with status 1.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { readFileSync } from "node:fs";
import { copyTree, mkdirs } from "./mp_fs.mjs";

const req = JSON.parse(readFileSync(0, "utf8"));
const mp = await loadMicroPython({
  heapsize: req.heap || 4 * 1024 * 1024,
  stdout: (s) => process.stdout.write(s + "\n"),
  stderr: (s) => process.stderr.write(s + "\n"),
});

const firmwareFiles = (name) => name.endsWith(".py") || name.endsWith(".json");
for (const [target, host] of Object.entries(req.dirs || {})) copyTree(mp, host, target, firmwareFiles);
for (const [target, content] of Object.entries(req.files || {})) {
  mkdirs(mp, target.split("/").slice(0, -1).join("/"));
  mp.FS.writeFile(target, content);
}
const prelude = "import sys\n" + (req.path || []).map((p) => `sys.path.insert(0, ${JSON.stringify(p)})\n`).join("");
try {
  mp.runPython(prelude + req.code);
} catch (e) {
  process.stderr.write(String(e && e.message ? e.message : e) + "\n");
  process.exit(1);
}
