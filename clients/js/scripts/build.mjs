// Builds dist/eventpipe.min.js (IIFE, `window.eventpipe`) and dist/eventpipe.mjs (ES module).
// `node scripts/build.mjs [OUTDIR]` (default: dist). Deterministic: same sources, same bytes.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const out = path.resolve(process.argv[2] || path.join(root, "dist"));
const common = {
  entryPoints: [path.join(root, "src/eventpipe.js")],
  bundle: true,
  target: ["es2018"],
  legalComments: "none",
  logLevel: "warning",
};
await build({
  ...common,
  format: "iife",
  globalName: "eventpipe",
  minify: true,
  outfile: path.join(out, "eventpipe.min.js"),
  banner: { js: "/* eventpipe browser tracker - built from clients/js/src */" },
});
await build({ ...common, format: "esm", outfile: path.join(out, "eventpipe.mjs") });
