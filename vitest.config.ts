import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
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
