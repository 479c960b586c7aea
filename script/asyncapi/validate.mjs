// Validate an AsyncAPI document with the official parser; print each diagnostic, exit 1 on any error.
// usage: node script/asyncapi/validate.mjs docs/asyncapi.yaml
import { Parser, fromFile } from "@asyncapi/parser";

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const level = ["error", "warning", "info", "hint"][d.severity] ?? d.severity;
  console.log(`${level}: ${d.path.join(".")}: ${d.message}`);
}
console.log(`${path}: ${errors.length} error(s), ${diagnostics.length - errors.length} other diagnostic(s)`);
process.exit(document === undefined || errors.length > 0 ? 1 : 0);
