import { accessSync, chmodSync, constants, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PibakeError } from "../errors.js";
import { writeFileAtomicSync } from "../host/files.js";
import { giveTo, mkdirOwned, userName } from "../host/sudo.js";

/**
 * The state directory: what must survive between builds (the CA, the server
 * certificate, generated secrets, cached hashes, build timings). It lives on
 * the build host and never enters the image. Files are 0600, directories 0700.
 * Under sudo, what it makes is the invoking user's (src/host/sudo.ts), so that
 * the commands run afterwards without sudo can read it.
 */
export class StateDir {
  constructor(readonly dir: string) {}

  /** `<config dir>/.pibake/<image name>/` unless the user names another. */
  static locate(configDir: string, imageName: string, override?: string): StateDir {
    return new StateDir(path.resolve(override ?? path.join(configDir, ".pibake", imageName)));
  }

  ensure(): void {
    this.refuseLockedOut(this.dir, constants.R_OK | constants.W_OK | constants.X_OK);
    try {
      const made = mkdirOwned(this.dir, 0o700);
      try {
        chmodSync(this.dir, 0o700);
      } catch (err) {
        // One that was there already and is another user's: the check above found it usable.
        if (made) throw err;
      }
    } catch (err) {
      throw new PibakeError(`cannot create the state directory ${this.dir}: ${(err as Error).message}`);
    }
  }

  /**
   * A state directory made by root (an older pibake under sudo: 0700, root's)
   * is there but closed to its user. That is said, with the owner and the fix,
   * rather than taken for a missing CA or a directory that cannot be made.
   */
  private refuseLockedOut(target: string, mode: number): void {
    try {
      accessSync(target, mode);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EACCES" && code !== "EPERM") return;
    }
    // The outermost directory on the way that this user cannot enter, else the target itself.
    const chain: string[] = [];
    for (let d = path.resolve(target); ; d = path.dirname(d)) {
      chain.unshift(d);
      if (d === path.dirname(d)) break;
    }
    const blocking = chain.slice(0, -1).find((d) => !canAccess(d, constants.X_OK)) ?? path.resolve(target);
    let owner = "another user";
    let modeText = "";
    try {
      const st = statSync(blocking);
      owner = userName(st.uid);
      modeText = `, mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}`;
    } catch {
      // Its own parent is closed too; the owner stays unnamed.
    }
    const me = os.userInfo().username;
    // Only what pibake makes (the state directory and the .pibake above it) is worth handing over whole.
    const fix = blocking.startsWith(this.dir + path.sep) ? this.dir : blocking;
    const ours = fix === this.dir || (fix === path.dirname(this.dir) && path.basename(fix) === ".pibake");
    throw new PibakeError(
      ours
        ? `the state directory ${this.dir} is there, but ${me} cannot ${mode & constants.W_OK ? "use" : "read"} it: ${blocking} belongs to ${owner}${modeText}${owner === "root" ? " (pibake run as root made it)" : ""}; make it yours: sudo chown -R ${me}: ${fix}`
        : `the state directory ${this.dir} cannot be reached by ${me}: ${blocking} belongs to ${owner}${modeText}; run pibake as a user who can read it, or pass --state DIR`,
    );
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  has(name: string): boolean {
    try {
      statSync(this.file(name));
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EACCES" || code === "EPERM") this.refuseLockedOut(this.file(name), constants.F_OK);
      return false;
    }
  }

  read(name: string): string | undefined {
    try {
      return readFileSync(this.file(name), "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return undefined;
      if (code === "EACCES" || code === "EPERM") this.refuseLockedOut(this.file(name), constants.R_OK);
      throw new PibakeError(`cannot read ${this.file(name)}: ${(err as Error).message}`);
    }
  }

  readJson<T>(name: string): T | undefined {
    const text = this.read(name);
    if (text === undefined) return undefined;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new PibakeError(`${this.file(name)} is not valid JSON: remove it and pibake will make it again`);
    }
  }

  /** Written to a temporary name and renamed, so that an interrupted write never leaves half a key. */
  write(name: string, data: string): void {
    this.ensure();
    writeFileAtomicSync(this.file(name), data, 0o600);
    giveTo(this.file(name));
  }

  writeJson(name: string, value: unknown): void {
    this.write(name, JSON.stringify(value, null, 2) + "\n");
  }

  /** Modes looser than 0600 on a key are reported, since another user could have read it. */
  looseFiles(names: string[]): string[] {
    return names.filter((n) => this.has(n) && (statSync(this.file(n)).mode & 0o077) !== 0);
  }
}

function canAccess(p: string, mode: number): boolean {
  try {
    accessSync(p, mode);
    return true;
  } catch {
    return false;
  }
}
