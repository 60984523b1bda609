import type { CAC } from "cac";
import { runFlash } from "../flash/flash.js";

interface FlashOptions {
  yes?: boolean;
  force?: boolean;
  unmount?: boolean;
  verify?: boolean;
  bmap?: boolean | string;
}

/** pibake flash IMAGE [DEVICE]: the project's issue 6. */
export function registerFlash(cli: CAC): void {
  cli
    .command("flash <image> [device]", "Write an image (.img, .xz, .zst, .gz, .zip) to an SD card or a file, and verify it")
    .option("--yes", "Do not ask before overwriting the device (for scripts)")
    .option("--force", "Allow a disk that is not removable")
    .option("--unmount", "Unmount the device's mounted partitions first")
    .option("--no-verify", "Do not read the card back to compare it with the image")
    .option("--bmap [file]", "Use this bmap file (default: the .bmap beside the image)")
    .option("--no-bmap", "Ignore a .bmap beside the image and write all of it")
    .example("pibake flash deploy/broker.img.xz            # choose the card from a list")
    .example("pibake flash deploy/broker.img.xz /dev/sdb --unmount")
    .action(async (image: string, device: string | undefined, options: FlashOptions) => {
      await runFlash({
        image,
        ...(device !== undefined ? { device: String(device) } : {}),
        yes: options.yes === true,
        force: options.force === true,
        unmount: options.unmount === true,
        verify: options.verify !== false,
        ...(options.bmap !== undefined ? { bmap: typeof options.bmap === "string" ? options.bmap : options.bmap !== false } : {}),
      });
    });
}
