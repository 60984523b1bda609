/** The pure half of pibake flash: device lists, safety rules, answers, progress lines. */
import { describe, expect, it } from "vitest";
import { checkTarget, systemUse, type SystemInfo, type Target } from "../src/flash/checks.js";
import { describeContents, flashCandidates, formatDeviceTable, majMinOf, mountsOf, parseLsblk, type BlockDevice } from "../src/flash/devices.js";
import { formatProgress } from "../src/flash/progress.js";
import { parseChoice } from "../src/flash/prompt.js";
import { isYes } from "../src/ui/prompt.js";
import { partitionTableProblem, sidecarOf } from "../src/flash/source.js";

const GiB = 1024 ** 3;

/** What `lsblk --json -b -o …` prints on a laptop with an SD card in a USB reader. */
const LSBLK = JSON.stringify({
  blockdevices: [
    {
      name: "nvme0n1",
      path: "/dev/nvme0n1",
      type: "disk",
      size: 512 * GiB,
      rm: false,
      hotplug: false,
      ro: false,
      tran: "nvme",
      vendor: null,
      model: "Samsung SSD 980",
      serial: "S1",
      mountpoints: [null],
      fstype: null,
      label: null,
      "maj:min": "259:0",
      children: [
        {
          name: "nvme0n1p1",
          path: "/dev/nvme0n1p1",
          type: "part",
          size: 1 * GiB,
          rm: false,
          hotplug: false,
          ro: false,
          mountpoints: ["/boot/efi"],
          fstype: "vfat",
          "maj:min": "259:1",
        },
        {
          name: "nvme0n1p2",
          path: "/dev/nvme0n1p2",
          type: "part",
          size: 511 * GiB,
          rm: false,
          hotplug: false,
          ro: false,
          mountpoints: [null],
          fstype: "crypto_LUKS",
          "maj:min": "259:2",
          children: [
            {
              name: "cryptroot",
              path: "/dev/mapper/cryptroot",
              type: "crypt",
              size: 511 * GiB,
              rm: false,
              hotplug: false,
              ro: false,
              mountpoints: [null],
              fstype: "LVM2_member",
              "maj:min": "254:0",
              children: [
                {
                  name: "vg-root",
                  path: "/dev/mapper/vg-root",
                  type: "lvm",
                  size: 500 * GiB,
                  rm: false,
                  hotplug: false,
                  ro: false,
                  mountpoints: ["/", "/home"],
                  fstype: "ext4",
                  "maj:min": "254:1",
                },
                {
                  name: "vg-swap",
                  path: "/dev/mapper/vg-swap",
                  type: "lvm",
                  size: 11 * GiB,
                  rm: false,
                  hotplug: false,
                  ro: false,
                  mountpoints: ["[SWAP]"],
                  fstype: "swap",
                  "maj:min": "254:2",
                },
              ],
            },
          ],
        },
      ],
    },
    {
      name: "sdb",
      path: "/dev/sdb",
      type: "disk",
      size: 31_914_983_424,
      rm: true,
      hotplug: true,
      ro: false,
      tran: "usb",
      vendor: "Generic ",
      model: "STORAGE DEVICE",
      serial: "0001",
      mountpoints: [null],
      fstype: null,
      "maj:min": "8:16",
      children: [
        {
          name: "sdb1",
          path: "/dev/sdb1",
          type: "part",
          size: 536_870_912,
          rm: true,
          hotplug: true,
          ro: false,
          mountpoints: ["/media/me/bootfs"],
          fstype: "vfat",
          label: "bootfs",
          "maj:min": "8:17",
        },
        {
          name: "sdb2",
          path: "/dev/sdb2",
          type: "part",
          size: 31_377_063_936,
          rm: true,
          hotplug: true,
          ro: false,
          mountpoints: ["/media/me/rootfs"],
          fstype: "ext4",
          label: "rootfs",
          "maj:min": "8:18",
        },
      ],
    },
    // An SD slot: mmc does not set the removable flag.
    {
      name: "mmcblk0",
      path: "/dev/mmcblk0",
      type: "disk",
      size: 15_931_539_456,
      rm: false,
      hotplug: false,
      ro: false,
      tran: "mmc",
      model: null,
      mountpoints: [null],
      "maj:min": "179:0",
    },
    // A locked card, and an empty reader.
    {
      name: "sdc",
      path: "/dev/sdc",
      type: "disk",
      size: 8 * GiB,
      rm: true,
      hotplug: true,
      ro: true,
      tran: "usb",
      model: "SD Reader",
      mountpoints: [null],
      "maj:min": "8:32",
    },
    {
      name: "sdd",
      path: "/dev/sdd",
      type: "disk",
      size: 0,
      rm: true,
      hotplug: true,
      ro: false,
      tran: "usb",
      model: "CF Reader",
      mountpoints: [null],
      "maj:min": "8:48",
    },
    // A second internal disk and a loop device (old lsblk style: strings for flags).
    {
      name: "sda",
      path: "/dev/sda",
      type: "disk",
      size: "2000398934016",
      rm: "0",
      hotplug: "0",
      ro: "0",
      tran: "sata",
      model: "WDC WD20",
      mountpoints: [null],
      "maj:min": "8:0",
    },
    { name: "loop3", path: "/dev/loop3", type: "loop", size: 134_217_728, rm: false, hotplug: false, ro: false, mountpoints: [null], "maj:min": "7:3" },
    {
      name: "sr0",
      path: "/dev/sr0",
      type: "rom",
      size: 1_073_741_312,
      rm: true,
      hotplug: false,
      ro: false,
      tran: "sata",
      mountpoints: [null],
      "maj:min": "11:0",
    },
  ],
});

const devs = parseLsblk(LSBLK);
const byPath = (p: string): BlockDevice => {
  for (const top of devs) {
    const stack = [top];
    while (stack.length) {
      const d = stack.pop()!;
      if (d.path === p) return d;
      stack.push(...d.children);
    }
  }
  throw new Error(p);
};
const top = (p: string): Target => ({ kind: "block", path: p, node: byPath(p), top: byPath(p) });
const system: SystemInfo = { rootMajMin: "254:1", swaps: ["/dev/dm-2"] };
const plain = { force: false, unmount: false };
const IMAGE = 4 * GiB;

describe("parseLsblk and the device list", () => {
  it("reads both current and old lsblk output", () => {
    expect(byPath("/dev/sda")).toMatchObject({ size: 2000398934016, removable: false, tran: "sata", model: "WDC WD20" });
    expect(byPath("/dev/sdb")).toMatchObject({ removable: true, vendor: "Generic", model: "STORAGE DEVICE", majMin: "8:16" });
    expect(byPath("/dev/mapper/vg-root").mountpoints).toEqual(["/", "/home"]);
    expect(byPath("/dev/nvme0n1").mountpoints).toEqual([]);
  });

  it("offers removable disks with a medium: USB, SD slots, locked cards; not fixed disks, empty readers, loops or optical drives", () => {
    expect(flashCandidates(devs).map((d) => d.path)).toEqual(["/dev/sdb", "/dev/mmcblk0", "/dev/sdc"]);
  });

  it("shows name, size, model, transport and mounts in columns", () => {
    const lines = formatDeviceTable(flashCandidates(devs));
    expect(lines[0]).toMatch(
      /^1\) +\/dev\/sdb +29\.7 GiB +Generic STORAGE DEVICE +usb +mounted: \/dev\/sdb1 on \/media\/me\/bootfs, \/dev\/sdb2 on \/media\/me\/rootfs$/,
    );
    expect(lines[1]).toMatch(/^2\) +\/dev\/mmcblk0 +14\.8 GiB +- +mmc +not mounted$/);
    // Columns line up.
    expect(new Set(lines.map((l) => l.indexOf("/dev/"))).size).toBe(1);
  });

  it("describes what is on a disk before it is destroyed", () => {
    expect(describeContents(byPath("/dev/sdb"))).toEqual([
      '/dev/sdb1: 512.0 MiB, vfat, "bootfs", mounted: /dev/sdb1 on /media/me/bootfs',
      '/dev/sdb2: 29.2 GiB, ext4, "rootfs", mounted: /dev/sdb2 on /media/me/rootfs',
    ]);
    expect(describeContents(byPath("/dev/mmcblk0"))).toEqual([]);
  });

  it("finds what the running system uses through partitions, LUKS and LVM", () => {
    expect(systemUse(byPath("/dev/nvme0n1"), system)).toEqual(["/boot/efi on /dev/nvme0n1p1", "/ on /dev/mapper/vg-root", "swap on /dev/mapper/vg-swap"]);
    expect(systemUse(byPath("/dev/sdb"), system)).toEqual([]);
    // Root found by its device number even when lsblk shows no mount point (e.g. in a container).
    expect(systemUse(byPath("/dev/sda"), { rootMajMin: "8:0", swaps: [] })).toEqual(["/ on /dev/sda"]);
    expect(systemUse(byPath("/dev/sda"), { swaps: ["/dev/sda"] })).toEqual(["swap on /dev/sda"]);
  });

  it("decodes dev_t like the kernel", () => {
    expect(majMinOf(0x801)).toBe("8:1");
    expect(majMinOf((259 << 8) | 3)).toBe("259:3");
    expect(majMinOf(0xfd00)).toBe("253:0");
    expect(majMinOf(BigInt(0x10000305))).toBe("3:65541"); // minor bits above 8 live at bit 12 and up
  });
});

describe("checkTarget", () => {
  type Row = [string, Target, number | undefined, { force: boolean; unmount: boolean }, RegExp | null];
  const rows: Row[] = [
    ["a removable card that fits", top("/dev/mmcblk0"), IMAGE, plain, null],
    [
      "the system disk",
      top("/dev/nvme0n1"),
      IMAGE,
      plain,
      /^\/dev\/nvme0n1 holds the running system \(\/boot\/efi on \/dev\/nvme0n1p1, \/ on \/dev\/mapper\/vg-root, swap on \/dev\/mapper\/vg-swap\): refusing to overwrite it; choose another device$/,
    ],
    ["the system disk, even with --force --unmount", top("/dev/nvme0n1"), IMAGE, { force: true, unmount: true }, /holds the running system/],
    [
      "a partition",
      { kind: "block", path: "/dev/sdb1", node: byPath("/dev/sdb1"), top: byPath("/dev/sdb") },
      IMAGE,
      plain,
      /^\/dev\/sdb1 is a partition on \/dev\/sdb: name the whole disk \(\/dev\/sdb\)/,
    ],
    [
      "an LVM volume",
      { kind: "block", path: "/dev/mapper/vg-root", node: byPath("/dev/mapper/vg-root"), top: byPath("/dev/nvme0n1") },
      IMAGE,
      plain,
      /is a lvm device on \/dev\/nvme0n1/,
    ],
    [
      "a card smaller than the image",
      top("/dev/mmcblk0"),
      16 * GiB,
      plain,
      /^\/dev\/mmcblk0 \(14\.8 GiB\) is smaller than the image \(16\.0 GiB\): use a larger card$/,
    ],
    [
      "mounted partitions",
      top("/dev/sdb"),
      IMAGE,
      plain,
      /^\/dev\/sdb has mounted partitions \(\/dev\/sdb1 on \/media\/me\/bootfs, \/dev\/sdb2 on \/media\/me\/rootfs\): unmount them or pass --unmount$/,
    ],
    ["mounted partitions with --unmount", top("/dev/sdb"), IMAGE, { force: false, unmount: true }, null],
    [
      "a fixed disk",
      top("/dev/sda"),
      IMAGE,
      plain,
      /^\/dev\/sda is not a removable disk but a fixed disk \(sata\): check the name, and pass --force if you really mean to overwrite it$/,
    ],
    ["a fixed disk with --force", top("/dev/sda"), IMAGE, { force: true, unmount: false }, null],
    ["a loop device", top("/dev/loop3"), 64 << 20, plain, /is not a removable disk but a loop device/],
    ["a locked card", top("/dev/sdc"), IMAGE, plain, /^\/dev\/sdc is read-only: if it is an SD card, slide its lock switch/],
    ["an empty reader", top("/dev/sdd"), IMAGE, plain, /^\/dev\/sdd has no medium \(size 0\): insert the card$/],
    ["an optical drive", top("/dev/sr0"), 1 << 20, plain, /^\/dev\/sr0 is a rom device: pibake writes to whole disks only$/],
    [
      "a missing device",
      { kind: "missing", path: "/dev/sdz", parentExists: true },
      IMAGE,
      plain,
      /^\/dev\/sdz does not exist: check the name, or run "pibake flash IMAGE" without a device/,
    ],
    ["a bare device name", { kind: "missing", path: "sdb", parentExists: true }, IMAGE, plain, /^sdb is not a file here: did you mean \/dev\/sdb\?$/],
    ["a new file", { kind: "missing", path: "out/copy.img", parentExists: true }, IMAGE, plain, null],
    ["a new file in a missing directory", { kind: "missing", path: "nodir/copy.img", parentExists: false }, IMAGE, plain, /directory nodir does not exist/],
    ["an existing file", { kind: "file", path: "copy.img", exists: true }, IMAGE, plain, null],
    ["the image itself", { kind: "file", path: "a.img", exists: true, sameAsInput: "image" }, IMAGE, plain, /^a\.img is the image itself/],
    ["a directory", { kind: "other", path: "/tmp", what: "a directory" }, IMAGE, plain, /^\/tmp is a directory, not a disk or a regular file/],
  ];

  it.each(rows)("%s", (_name, target, size, opts, expected) => {
    const r = checkTarget(target, size, opts, system);
    if (expected === null) expect(r.refusals).toEqual([]);
    else expect(r.refusals.join("\n")).toMatch(expected);
  });

  it("refuses the disk the image itself is read from", () => {
    const withInput = { ...system, inputs: [{ what: "image", majMin: "8:18" }] };
    expect(checkTarget(top("/dev/sdb"), IMAGE, { force: true, unmount: true }, withInput).refusals).toEqual([
      "/dev/sdb holds what is to be written (the image is on /dev/sdb2): copy the image to another disk first",
    ]);
  });

  it("lists every problem at once", () => {
    const r = checkTarget(top("/dev/sda"), 4000 * GiB, plain, system);
    expect(r.refusals).toHaveLength(2);
    expect(r.refusals[0]).toMatch(/smaller than the image/);
    expect(r.refusals[1]).toMatch(/not a removable disk/);
  });

  it("returns the mounts to undo with --unmount, and none otherwise", () => {
    expect(checkTarget(top("/dev/sdb"), IMAGE, { force: false, unmount: true }, system).unmount).toEqual(mountsOf(byPath("/dev/sdb")));
    expect(checkTarget(top("/dev/sdb"), IMAGE, plain, system).unmount).toEqual([]);
  });

  it("cannot tell the size of some images before reading them, and then lets the write find out", () => {
    expect(checkTarget(top("/dev/mmcblk0"), undefined, plain, system).refusals).toEqual([]);
  });
});

describe("answers", () => {
  it.each([
    ["1", 3, 0],
    [" 3 ", 3, 2],
    ["4", 3, undefined],
    ["0", 3, undefined],
    ["sdb", 3, undefined],
    ["", 3, "cancel"],
    ["q", 3, "cancel"],
  ] as const)("choice %j of %d is %j", (answer, n, expected) => {
    expect(parseChoice(answer, n)).toBe(expected);
  });

  it("needs an explicit yes", () => {
    expect(["y", "Y", "yes", " YES "].map(isYes)).toEqual([true, true, true, true]);
    expect(["", "n", "no", "yess", "ok"].map(isYes)).toEqual([false, false, false, false, false]);
  });
});

describe("formatProgress", () => {
  it("shows bar, percentage, amounts, throughput and time left", () => {
    expect(formatProgress({ phase: "Writing", done: 512 * 2 ** 20, total: 2048 * 2 ** 20, rate: 32 * 2 ** 20 }, 8)).toBe(
      "Writing   [##------]  25% 512.0 MiB/2.0 GiB 32.0 MiB/s 48s left",
    );
  });
  it("copes with an unknown total and no rate yet", () => {
    expect(formatProgress({ phase: "Writing", done: 3 << 20 })).toBe("Writing   3.0 MiB");
  });
  it("fits 80 columns for any card size and speed", () => {
    const line = formatProgress({ phase: "Verifying", done: 123.4 * 2 ** 30, total: 999.9 * 2 ** 30, rate: 123.4 * 2 ** 20 });
    expect(line.length).toBeLessThan(80);
  });
});

describe("what flash takes for a disk image", () => {
  const sector = (fill: (s: Buffer) => void) => {
    const s = Buffer.alloc(512);
    fill(s);
    return s;
  };
  const signed = (s: Buffer) => {
    s[510] = 0x55;
    s[511] = 0xaa;
  };
  const entry = (s: Buffer, i: number, type: number, start: number, sectors: number, status = 0) => {
    const e = 446 + 16 * i;
    s[e] = status;
    s[e + 4] = type;
    s.writeUInt32LE(start, e + 8);
    s.writeUInt32LE(sectors, e + 12);
  };

  it.each([
    ["Raspberry Pi OS's MBR", sector((s) => (entry(s, 0, 0x0c, 8192, 1048576), entry(s, 1, 0x83, 1056768, 4194304), signed(s))), undefined],
    ["a GPT disk's protective MBR", sector((s) => (entry(s, 0, 0xee, 1, 0xffffffff), signed(s))), undefined],
    ["an empty file", Buffer.alloc(0), "it is empty"],
    ["text shorter than a sector", Buffer.from("abc123  x.img.xz\n"), "it is 17 bytes long, shorter than one sector"],
    ["a sector without the signature", sector((s) => entry(s, 0, 0x0c, 8192, 1024)), "its first sector holds no partition table (no MBR or GPT signature)"],
    [
      "a FAT boot sector (text where the entries would be)",
      sector((s) => (s.write("press any key to try again ... \r\n", 440, "latin1"), signed(s))),
      "its first sector ends like a boot sector but holds no valid partition table (a file system on its own, not a whole disk)",
    ],
    ["a signed sector with no partitions", sector(signed), "its partition table is empty"],
    [
      "an entry at sector 0",
      sector((s) => (entry(s, 0, 0x83, 0, 1024), signed(s))),
      "its partition table has an entry that starts at sector 0 or is empty: it is damaged, or not a partition table",
    ],
  ])("%s", (_what, head, problem) => {
    expect(partitionTableProblem(head)).toBe(problem);
  });

  it("names the image a sidecar belongs to, when it is there", () => {
    const there = new Set(["deploy/b-h-2026-01-10.img.xz", "raw/b.img"]);
    const exists = (p: string) => there.has(p);
    expect(sidecarOf("deploy/b-h-2026-01-10.img.xz.sha256", exists)).toBe("the checksum file of deploy/b-h-2026-01-10.img.xz");
    expect(sidecarOf("deploy/b-h-2026-01-10.img.bmap", exists)).toBe("the block map of deploy/b-h-2026-01-10.img.xz");
    expect(sidecarOf("deploy/b-h-2026-01-10.manifest.json", exists)).toBe("the build manifest of deploy/b-h-2026-01-10.img.xz");
    expect(sidecarOf("deploy/b-h-2026-01-10.log", exists)).toBe("the build log of deploy/b-h-2026-01-10.img.xz");
    expect(sidecarOf("raw/b.img.bmap", exists)).toBe("the block map of raw/b.img");
    expect(sidecarOf("deploy/other.log", exists)).toBeUndefined();
    expect(sidecarOf("notes.txt", exists)).toBeUndefined();
  });
});
