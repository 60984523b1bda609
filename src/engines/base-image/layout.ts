import { promises as fsp } from "node:fs";
import { checkFileSystems, checkRaspiLayout, parseMbr, SECTOR_SIZE } from "../../image/partitions.js";

/** Sector 0 and the file systems' first bytes: the Raspberry Pi OS checks, with messages that name the image. */
export type Layout = ReturnType<typeof checkRaspiLayout> & ReturnType<typeof checkFileSystems>;

export async function readLayout(image: string, label: string): Promise<Layout> {
  const fh = await fsp.open(image, "r");
  try {
    const { size } = await fh.stat();
    const read = async (pos: number, n: number) => {
      const b = Buffer.alloc(n);
      const { bytesRead } = await fh.read(b, 0, n, pos);
      return b.subarray(0, bytesRead);
    };
    const table = parseMbr(await read(0, SECTOR_SIZE), label);
    const layout = checkRaspiLayout(table, size, label);
    const fs = checkFileSystems(layout, await read(layout.boot.offset, SECTOR_SIZE), await read(layout.root.offset, 2048), label);
    return { ...layout, ...fs };
  } finally {
    await fh.close();
  }
}
