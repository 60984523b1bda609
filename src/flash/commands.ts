import type { Command } from "../host/process.js";

/**
 * The programs flash runs to find cards and to make the kernel see what was
 * written, as pure command builders: the arguments are decided here and
 * tested as data (test/commands.test.ts). Each answer is judged by the caller.
 */

/** Every block device as JSON, sizes in bytes (-b), with the columns parseLsblk reads. */
export const listBlockDevicesJson = (columns: string): Command => ({
  cmd: "lsblk",
  args: ["--json", "-b", "-o", columns],
  what: "listing block devices",
  okCodes: "any",
});

/** Drops the device's cached blocks, so that reads after buffered writes come from the medium. */
export const flushBuffers = (device: string): Command => ({
  cmd: "blockdev",
  args: ["--flushbufs", device],
  what: `flushing ${device}'s cache`,
  okCodes: "any",
});

/** BLKRRPART: the kernel reads the new partition table (loop devices without partition scanning refuse it). */
export const rereadPartitionTable = (device: string): Command => ({
  cmd: "blockdev",
  args: ["--rereadpt", device],
  what: `rereading ${device}'s partitions`,
  okCodes: "any",
});

/** BLKPG, partition by partition: where BLKRRPART is refused. */
export const updatePartitions = (device: string): Command => ({ cmd: "partx", args: ["-u", device], what: `updating ${device}'s partitions`, okCodes: "any" });
