import { runFlash } from "../flash/flash.js";

export interface FlashOptions {
  yes?: boolean;
  force?: boolean;
  unmount?: boolean;
  verify?: boolean;
  bmap?: boolean | string;
}

/** pibake flash IMAGE [DEVICE]: cac's options as runFlash takes them. */
export async function flashCommand(image: string, device: string | undefined, options: FlashOptions): Promise<void> {
  await runFlash({
    image,
    ...(device !== undefined ? { device: String(device) } : {}),
    yes: options.yes === true,
    force: options.force === true,
    unmount: options.unmount === true,
    verify: options.verify !== false,
    ...(options.bmap !== undefined ? { bmap: typeof options.bmap === "string" ? options.bmap : options.bmap !== false } : {}),
  });
}
