/**
 * Templates compiled by the build (src/render/precompile.ts) render exactly
 * what the same templates compiled at run time render, and a template edited
 * since the build is compiled from its source, never taken stale.
 */
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { overlaysDir, stagesDir } from "../src/paths.js";
import { precompiledModule, templateFiles } from "../src/render/precompile.js";
import { OVERLAY, templateFor } from "../src/render/overlay.js";
import { loadTemplate, templateKey, type PrecompiledTemplates } from "../src/render/templates.js";
import { buildView } from "../src/render/view.js";
import type { View } from "../src/render/view.js";
import { removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";

let fx: Fixture;
let view: View;
let ahead: PrecompiledTemplates;

beforeAll(async () => {
  fx = await renderFixture();
  view = buildView(fx.model, fx.secrets);
  // The module the build writes, made from the templates as they are now.
  const file = path.join(tempDir("pibake-templates-"), "templates.precompiled.cjs");
  writeFileSync(file, precompiledModule());
  ahead = createRequire(import.meta.url)(file) as PrecompiledTemplates;
});
afterAll(() => {
  fx?.cleanup();
  removeAllFixtures();
});

describe("templates compiled by the build", () => {
  it("hold every template under overlays/ and stages/", () => {
    const files = templateFiles();
    expect(files.some((f) => f.startsWith(overlaysDir + path.sep))).toBe(true);
    expect(files.some((f) => f.startsWith(stagesDir + path.sep))).toBe(true);
    expect(Object.keys(ahead).sort()).toEqual(files.map(templateKey).sort());
  });

  it("render the overlay and pi-gen's config as the templates compiled at run time do", () => {
    const specs = OVERLAY.filter((s) => !s.when || s.when(view));
    expect(specs.length).toBeGreaterThan(20);
    for (const spec of specs) {
      const file = templateFor(spec);
      const text = loadTemplate(file, ahead)(view);
      expect(text, spec.path).toBe(loadTemplate(file, null)(view));
      expect(text, spec.path).toBe(fx.overlayText(spec.target ? spec.target(view) : spec.path));
    }
    const piGenConfig = path.join(stagesDir, "pi-gen.config.hbs");
    expect(loadTemplate(piGenConfig, ahead)(view)).toBe(loadTemplate(piGenConfig, null)(view));
    expect(loadTemplate(piGenConfig, ahead)(view)).toBe(fx.rendered.piGenConfig);
  });

  it("are strict as the run-time compiler is: a value the view lacks is an error", () => {
    const file = templateFor(OVERLAY.find((s) => s.path === "etc/mosquitto/conf.d/pibake.conf")!);
    const { lanPort: _, ...mqtt } = view.mqtt;
    const lacking = { ...view, mqtt };
    expect(() => loadTemplate(file, ahead)(lacking)).toThrow(/"lanPort" not defined in/);
    expect(() => loadTemplate(file, null)(lacking)).toThrow(/"lanPort" not defined in/);
  });

  it("are not used for a template whose source changed since the build", () => {
    const file = templateFor(OVERLAY.find((s) => s.path === "etc/mosquitto/conf.d/pibake.conf")!);
    const other = templateFor(OVERLAY.find((s) => s.path === "etc/mosquitto/mosquitto.conf")!);
    // The entry of this file, but compiled from another source: its digest does not match the file.
    const stale: PrecompiledTemplates = { [templateKey(file)]: ahead[templateKey(other)]! };
    expect(loadTemplate(file, stale)(view)).toBe(fx.overlayText("etc/mosquitto/conf.d/pibake.conf"));
    expect(loadTemplate(file, stale)(view)).not.toBe(loadTemplate(other, ahead)(view));
  });
});
