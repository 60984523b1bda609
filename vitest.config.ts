import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/** The usual order, except that base-image.test.ts comes first: its first build is handed to boot.test.ts (test/helpers/broker-image.ts). */
class BuilderFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const builder = sorted.filter((f) => f.moduleId.endsWith("/test/base-image.test.ts"));
    return [...builder, ...sorted.filter((f) => !builder.includes(f))];
  }
}

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    sequence: { sequencer: BuilderFirst },
    // Real programs (mosquitto, qemu-user chroots, loop devices) are slow to start.
    testTimeout: 120_000,
    hookTimeout: 600_000,
    // Tests that touch loop devices, mounts and the shared rootfs cache must not overlap.
    fileParallelism: false,
    // Renders choose the Node-RED version offline (the pinned release): no test depends on the
    // registry's answer unless it asks it itself (test/node-red.test.ts does).
    env: { PIBAKE_OFFLINE: "1" },
  },
});
