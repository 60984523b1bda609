/** A first sector with one partition entry (type, first sector, sectors) and the boot signature: the least that pibake flash takes for a disk image. */
export function minimalMbr(type = 0x0c, start = 2048, sectors = 8192, size = 512): Buffer {
  const s = Buffer.alloc(size);
  s[446 + 4] = type;
  s.writeUInt32LE(start, 446 + 8);
  s.writeUInt32LE(sectors, 446 + 12);
  s[510] = 0x55;
  s[511] = 0xaa;
  return s;
}
