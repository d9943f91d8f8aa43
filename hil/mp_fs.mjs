// Host folders into MicroPython's in-memory filesystem (the WebAssembly port's
// Emscripten FS): written once for mp_node.mjs and mp_session.mjs.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

export function mkdirs(mp, p) {
  let cur = "";
  for (const part of p.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { mp.FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}

// Copies host's tree to target, skipping __pycache__, dot files and any file
// for which keep(name) is false.
export function copyTree(mp, host, target, keep = () => true) {
  mkdirs(mp, target);
  for (const name of readdirSync(host)) {
    if (name === "__pycache__" || name.startsWith(".")) continue;
    const hp = join(host, name);
    const tp = (target === "/" ? "" : target) + "/" + name;
    if (statSync(hp).isDirectory()) copyTree(mp, hp, tp, keep);
    else if (keep(name)) mp.FS.writeFile(tp, readFileSync(hp));
  }
}
