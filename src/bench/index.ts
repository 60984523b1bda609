import os from "node:os";
import { benchFlash } from "./flash.js";
import { benchRender } from "./render.js";
import { benchStartup } from "./startup.js";
import { benchBaseImage } from "./base-image.js";
import { benchPiGen } from "./pigen.js";
import { benchFastRegen } from "./fast-regen.js";

/**
 * `npm run bench`: each section measures one part on this machine and returns
 * report lines. Sections that need root, loop devices or a pi-gen checkout say
 * so instead of measuring.
 */
const sections: [string, () => Promise<string[]>][] = [
  ["startup", () => benchStartup()],
  ["render", () => benchRender()],
  ["flash", () => benchFlash()],
  ["base-image", () => benchBaseImage()],
  ["fast-regen", () => benchFastRegen()],
  ["pi-gen", () => benchPiGen()],
];

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  console.log(`pibake bench on ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, ${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB, Node ${process.version}`);
  for (const [name, run] of sections) {
    if (only.length && !only.includes(name)) continue;
    console.log(`\n## ${name}`);
    try {
      for (const line of await run()) console.log(`  ${line}`);
    } catch (err) {
      console.log(`  failed: ${(err as Error).message}`);
      process.exitCode = 1;
    }
  }
}

await main();
