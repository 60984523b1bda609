import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Real programs (mosquitto, qemu-user chroots, loop devices) are slow to start.
    testTimeout: 120_000,
    hookTimeout: 600_000,
    // Tests that touch loop devices, mounts and the shared rootfs cache must not overlap.
    fileParallelism: false,
  },
});
