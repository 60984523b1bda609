import type { CAC } from "cac";
import type { BuildOptions } from "./build.js";
import type { CaOptions } from "./ca.js";
import type { CheckOptions } from "./check.js";
import type { FlashOptions } from "./flash.js";
import type { ImagesOptions } from "./images.js";
import type { InitOptions } from "./init.js";
import type { PushOptions } from "./push.js";
import type { RenderOptions } from "./render.js";
import { checkAction, type Action } from "../usage.js";

/** The actions of the commands that take one, for their help and to check the word before loading the command. */
export const ACTIONS: Record<string, Action[]> = {
  ca: [
    { name: "export", description: "Write the CA certificate for clients (to standard output, or --out FILE)" },
    { name: "show", description: "Print subject, SHA-256 fingerprint and expiry of the CA and of the server certificate" },
  ],
  images: [
    { name: "list", description: "Show the cached official images and interrupted downloads" },
    { name: "prune", description: "Remove all but the newest image of each release/arch (--all: every one)" },
    { name: "fetch", description: "Download and verify an official image into the cache ahead of a build (--release, --arch, --date)" },
  ],
};

/**
 * Every command with its options, help and examples, registered at start.
 * A command's code (config loading, rendering, the engines, flash, node-forge,
 * bcrypt, Handlebars…) is imported only inside its action, when that command
 * runs: `pibake --version` and `pibake --help` load none of it.
 */
export function registerCommands(cli: CAC): void {
  cli
    .command(
      "init [file]",
      "Make a config (default: broker.json here) and its secrets by answering a few questions on a terminal (the network proposed from this machine's, SSH keys from ~/.ssh, passwords generated when you press Enter), or from flags without a terminal (on one, the flags given are the proposals); the secrets go to secrets/ beside it (files 0600), nothing existing is replaced, and nothing is written until the end",
    )
    .option("--domain <name>", "The public freemyip name, e.g. home.freemyip.com (needed without a terminal)")
    .option("--ddns-token-file <file>", "The file with the freemyip token, referenced from the config (needed without a terminal)")
    .option("--address <cidr>", "The Pi's static address with prefix length, e.g. 192.168.1.10/24 (needed without a terminal)")
    .option("--gateway <ip>", "The router's address (needed without a terminal)")
    .option("--user <name>", "The Pi's user (default: yours, else admin)")
    .option("--mqtt-user <name>", "An MQTT user, with a generated password (repeat for several; default: home)")
    .option("--ssh-key <file>", "The public key (.pub) to log in with; without one SSH takes the password")
    .option("--wifi-ssid <ssid>", "Join this Wi-Fi network, with the static address on wlan0")
    .option("--wifi-passphrase-file <file>", "With --wifi-ssid: the file with the Wi-Fi passphrase, referenced from the config")
    .option("--wifi-country <code>", "With --wifi-ssid: the country, e.g. DE (default: from LANG)")
    .option("--no-node-red", "Leave Node-RED out (by default it is on)")
    .option("--timezone <zone>", "The Pi's time zone (default: this machine's)")
    .example("pibake init                  # asks, writes broker.json and secrets/ here")
    .example(
      "pibake init home/broker.json --domain home.freemyip.com --ddns-token-file token.txt --address 192.168.1.10/24 --gateway 192.168.1.1 --ssh-key ~/.ssh/id_ed25519.pub </dev/null",
    )
    .action(async (file: string | undefined, opts: InitOptions) => (await import("./init.js")).initCommand(file, opts));

  cli
    .command("render <config>", "Render the pi-gen stage, overlay, pi-gen config and CA certificate into a directory")
    .option("--out <dir>", "Output directory (must be empty or absent unless --force)")
    .option("--state <dir>", "State directory with the CA and certificates (default: <config dir>/.pibake/<image name>)")
    .option("--force", "Replace a non-empty output directory")
    .example("pibake render examples/broker.json --out render/")
    .action(async (configPath: string, opts: RenderOptions) => (await import("./render.js")).renderCommand(configPath, opts));

  cli
    .command("validate <config>", "Check a config without writing anything")
    .action(async (configPath: string) => (await import("./validate.js")).validateCommand(configPath));

  cli.command("schema", "Print the JSON Schema of the config file").action(async () => (await import("./schema.js")).schemaCommand());

  cli
    .command("ca <action> [config]", "CA certificate: `ca export` writes it for clients, `ca show` describes the CA and server certificate")
    .option("--state <dir>", "State directory (default: from the config: <config dir>/.pibake/<image name>)")
    .option("--out <file>", "With export: write to this file instead of standard output (an existing certificate is replaced)")
    .option("--force", "With export --out: replace an existing file that is not a certificate")
    .example("pibake ca export examples/broker.json --out ca.crt")
    .example("pibake ca show --state examples/.pibake/mqtt-broker")
    .action(async (action: string, configPath: string | undefined, opts: CaOptions) =>
      (await import("./ca.js")).caCommand(checkAction("ca", action, ACTIONS.ca!), configPath, opts),
    );

  cli
    .command("flash <image> [device]", "Write an image (.img, .xz, .zst, .gz, .zip) to an SD card or a file, and verify it")
    .option("--yes", "Do not ask before overwriting the device (for scripts)")
    .option("--force", "Allow a disk that is not removable")
    .option("--unmount", "Unmount the device's mounted partitions first")
    .option("--no-verify", "Do not read the card back to compare it with the image (by default it is read back and compared)")
    .option("--bmap [file]", "Use this bmap file (default: the .bmap beside the image)")
    .option("--no-bmap", "Ignore a .bmap beside the image and write all of it (by default a .bmap beside the image is used)")
    .example("sudo pibake flash deploy/broker-home.example.com-2026-01-10.img.xz       # choose the card from a list")
    .example("sudo pibake flash deploy/broker-home.example.com-2026-01-10.img.xz /dev/sdb --unmount")
    .example("pibake flash deploy/broker-home.example.com-2026-01-10.img.xz copy.img   # a file as the target")
    .action(async (image: string, device: string | undefined, opts: FlashOptions) => (await import("./flash.js")).flashCommand(image, device, opts));

  cli
    .command(
      "images [action]",
      "Official Raspberry Pi OS images kept for builds: `images list` shows them, `images prune` removes all but the newest of each release/arch, `images fetch` downloads and verifies one ahead of a build",
    )
    .option("--all", "With prune: remove every cached image and interrupted download")
    .option("--release <release>", "With fetch: trixie or bookworm (default trixie)")
    .option("--arch <arch>", "With fetch: arm64 or armhf (default arm64)")
    .option("--date <date>", "With fetch: the release date to pin, YYYY-MM-DD (default: the newest)")
    .option("--os-list <url>", "With fetch: where the official images are listed (default PIBAKE_OS_LIST_URL, else Raspberry Pi's)")
    .example("pibake images list")
    .example("pibake images prune --all")
    .example("pibake images fetch --release bookworm --arch arm64")
    .action(async (action: string | undefined, opts: ImagesOptions) =>
      (await import("./images.js")).imagesCommand(checkAction("images", action, ACTIONS.images!), opts),
    );

  cli
    .command(
      "check <config> [host]",
      "Check a running broker the way its clients see it: TLS (chain, name, version, expiry, origin), MQTT logins and a message round trip, DNS and the WAN address, Node-RED's login",
    )
    .option("--lan", "Check from the home network: the LAN listener too, no DNS; HOST defaults to the static address (network.address)")
    .option("--json", "Print the results as one JSON object")
    .option("--state <dir>", "State directory with the CA and certificates (default: <config dir>/.pibake/<image name>)")
    .option("--port-tls <port>", "The TLS listener's port (default: mqtt.tlsPort)")
    .option("--port-lan <port>", "With --lan: the plain listener's port (default: mqtt.lanPort)")
    .option("--port-ws <port>", "Check MQTT over WebSockets with TLS on this port (default: the config's WebSockets port, if any)")
    .option("--port-node-red <port>", "Node-RED's editor port (default: nodeRed.port)")
    .option("--dns-server <ip[:port]>", "Ask this DNS server for the domain (and HOST) instead of the system's")
    .option("--ca-file <file>", "With tls.mode \"acme\": also trust this root certificate (PEM), e.g. a test CA or Let's Encrypt's staging root")
    .option("--ssh", "Also check that the first user logs in with an SSH key of the config (the system's ssh client) and that passwords are refused")
    .option("--ssh-key <file>", "With --ssh: the private key to log in with (default: ssh's own: agent, ~/.ssh)")
    .option("--port-ssh <port>", "With --ssh: the SSH port (default 22)")
    .option("--timeout <seconds>", "How long each check may wait (every wait together stays under 25 s)", { default: 5 })
    .example("pibake check broker.json                   # through the Internet: DNS, TLS, MQTT")
    .example("pibake check broker.json --lan             # from home, at the static address")
    .example("pibake check broker.json 203.0.113.7 --json")
    .action(async (configPath: string, host: string | undefined, opts: CheckOptions) => (await import("./check.js")).checkCommand(configPath, host, opts));

  cli
    .command(
      "push <config> <host>",
      "Bring a running Pi to what the config now says, over SSH, without a new image: certificate and domain, MQTT users and rules, ddclient, Node-RED's login; rolled back if the broker does not come up",
    )
    .option("--yes", "Do not ask before changing the Pi (needed without a terminal)")
    .option("--state <dir>", "State directory with the CA and certificates (default: <config dir>/.pibake/<image name>)")
    .option("--ssh-key <file>", "The private key of one of user.sshKeys (default: ~/.ssh/id_ed25519)")
    .option("--port <port>", "The Pi's SSH port", { default: 22 })
    .option("--known-hosts <file>", "Where the Pi's host key is remembered (default: known_hosts in the state directory)")
    .option("--allow-network-change", "Also push a changed network profile (static address, Wi-Fi): a mistake there loses the Pi")
    .option("--dry-run", "Only show what would change: nothing is changed on the Pi")
    .example("pibake push broker.json 192.168.1.10          # shows the changes, asks, applies")
    .example("pibake push broker.json broker.lan --yes --ssh-key ~/.ssh/pi_ed25519")
    .example("pibake push broker.json 192.168.1.10 --dry-run  # what a build of broker.json would change on the Pi")
    .action(async (configPath: string, host: string, opts: PushOptions) => (await import("./push.js")).pushCommand(configPath, host, opts));

  cli
    .command(
      "build <config>",
      "Build the broker image in minutes from the official Raspberry Pi OS Lite (downloaded, verified and cached), from an image given with --base, or from scratch with --engine pi-gen",
    )
    .option("--out <dir>", "Where the image and its files go", { default: "./deploy" })
    .option("--state <dir>", "State directory with the CA and certificates (default: <config dir>/.pibake/<image name>)")
    .option("--compress <kind>", "Compress the image: xz, zstd or none", { default: "xz" })
    .option("--engine <engine>", "base (the default: start from a Raspberry Pi OS image) or pi-gen (build the system from scratch)")
    .option(
      "--base <image>",
      "Start from this Raspberry Pi OS image (.img, .img.xz, .img.gz, .img.zst, .zip), or raspios@YYYY-MM-DD for an official release (default: the newest official Lite)",
    )
    .option("--os-list <url>", "Where the official images are listed (Raspberry Pi Imager's OS list; default PIBAKE_OS_LIST_URL, else Raspberry Pi's)")
    .option("--grow <size>", "Builds from an image: add this much to the root partition (e.g. 1G; default auto: room for the packages)")
    .option("--shrink", "Builds from an image: shrink the image to its used size plus a margin (the first boot expands it again)")
    .option("--full", "Builds from an image pibake built: the full way (root, loop devices, a chroot) even when only files change")
    .option("--verbose", "Show the output of apt-get and the stage's scripts")
    .option("--log-format <format>", "auto (a live status line on a terminal) or plain (one line per event)", { default: "auto" })
    .option("--pi-gen <dir>", "pi-gen: use this pi-gen checkout (implies --engine pi-gen)")
    .option("--update-pi-gen", "pi-gen: update pibake's pi-gen clone first")
    .option("--runner <runner>", "pi-gen: native or docker")
    .option("--base-stages <dir>", "pi-gen: stage directories that replace stage0-2, run before stage-pibake (repeat for several; default: image.baseStages)")
    .option("--clean", "pi-gen: start from a clean pi-gen work directory")
    .option(
      "--dry-run",
      "Only print the plan: engine, base image (cached or to download), steps, output files, and each host requirement found or missing with the apt-get line that installs it. No root needed; nothing is written. Exit 2 when the build could not run",
    )
    .option("--json", "With --dry-run: print the plan as JSON")
    .example("sudo -E pibake build broker.json                 # from the newest official Raspberry Pi OS Lite")
    .example("sudo -E pibake build broker.json --base raspios@2025-12-04")
    .example("sudo -E pibake build broker.json --base 2025-11-24-raspios-trixie-arm64-lite.img.xz")
    .example("sudo -E pibake build broker.json --base deploy/broker-home.example.com-2026-01-10.img --compress none   # seconds: only the overlay changes")
    .example("pibake build broker.json --engine pi-gen --runner docker")
    .example("pibake build broker.json --dry-run                # what a build would do and need, without root")
    .action(async (configPath: string, opts: BuildOptions) => {
      await (await import("./build.js")).buildCommand(configPath, opts);
    });
}
