import path from "node:path";
import { createOutput } from "../ui/output.js";
import { secretsOf } from "../protected-paths.js";
import { loadAndWarn } from "../pipeline.js";

/** pibake validate CONFIG: every problem at once, or what the config describes and where each secret comes from. */
export function validateCommand(configPath: string): void {
  const out = createOutput();
  const { model } = loadAndWarn(configPath, out);
  out.info(`${path.resolve(configPath)} is valid: image ${model.image.name} (${model.image.release}, ${model.image.arch}), domain ${model.tls.domain}`);
  // File references may point anywhere the user can read: say where each secret came from.
  for (const [where, secret] of secretsOf(model)) {
    out.info(
      `  ${where}: ${secret.sourceFile ? `from file ${secret.sourceFile}` : secret.origin === "literal" ? "written in the config" : `from ${secret.origin.replace(/^env /, "environment variable ")}`}`,
    );
  }
}
